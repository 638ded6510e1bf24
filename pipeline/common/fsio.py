"""File access through fsspec, so every stage reads and writes local paths and object storage alike.

Atomicity: a local output is written to a temp name in the same folder and renamed with os.replace;
an object-store output is uploaded whole in one PUT (object stores never show a partial object).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem


def get_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and path inside it for a local path or a URL such as s3://bucket/prefix."""
    fs, path = fsspec.core.url_to_fs(str(url))
    return fs, path


def is_local(url: str) -> bool:
    return isinstance(get_fs(url)[0], LocalFileSystem)


def join(url: str, *parts: str) -> str:
    """Join path parts with '/', keeping the URL scheme."""
    out = str(url).rstrip("/")
    for part in parts:
        out = f"{out}/{str(part).strip('/')}"
    return out


def exists(url: str) -> bool:
    fs, path = get_fs(url)
    return fs.exists(path)


def makedirs(url: str) -> None:
    fs, path = get_fs(url)
    if isinstance(fs, LocalFileSystem):
        fs.makedirs(path, exist_ok=True)


def read_bytes(url: str) -> bytes:
    fs, path = get_fs(url)
    with fs.open(path, "rb") as f:
        return f.read()


_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_local_path(url: str) -> Iterator[str]:
    """Yield a local temp file path; on success it becomes `url`, on failure it is removed."""
    fs, path = get_fs(url)
    local = isinstance(fs, LocalFileSystem)
    folder = os.path.dirname(path) if local else None
    if local:
        os.makedirs(folder or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=folder)
    os.close(fd)
    try:
        yield tmp
        if local:
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual umask mode
            os.replace(tmp, path)
        else:
            fs.put_file(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(url: str, data: bytes) -> None:
    with atomic_local_path(url) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(url: str, text: str) -> None:
    atomic_write_bytes(url, text.encode("utf-8"))


def remove_stale_temps(url_dir: str) -> int:
    """Delete temp files a killed run left behind in a local output folder; return how many."""
    fs, path = get_fs(url_dir)
    if not isinstance(fs, LocalFileSystem) or not os.path.isdir(path):
        return 0
    n = 0
    for name in os.listdir(path):
        if name.startswith(".tmp-"):
            os.unlink(os.path.join(path, name))
            n += 1
    return n
