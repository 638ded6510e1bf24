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

from geo_ssl.pipeline.common import procs, storage
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.retry import DISK_FULL_ERRNOS, RetryingReader, retry_io


def get_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and path inside it for a local path or a URL such as s3://bucket/prefix, with the
    command's storage options (endpoint, profile, region, anon: see storage.py)."""
    url = str(url)
    options = {} if "::" in url else storage.options_for(url)  # a chained URL keeps fsspec's own rules
    fs, path = fsspec.core.url_to_fs(url, **options)
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


def check_output_dir(url: str, flag: str) -> None:
    """Fail at once, on one line naming `flag`, when a local output folder cannot be created or written
    (a file is in the way, no permission, a read-only filesystem); creates the folder. Object storage is
    checked by its first write."""
    fs, path = get_fs(url)
    if not isinstance(fs, LocalFileSystem):
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise GeoSSLError(f"{flag} {url}: is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise GeoSSLError(f"{flag} {url}: cannot write there ({exc.strerror or exc})") from None


def read_bytes(url: str) -> bytes:
    """The whole file; transient I/O errors are retried, then raise retry.StorageError (never a short read)."""

    def read() -> bytes:
        fs, path = get_fs(url)
        with fs.open(path, "rb") as f:
            return f.read()

    return retry_io(read, f"reading {url}")


def open_read(url: str) -> RetryingReader:
    """A seekable reader whose reads are retried like read_bytes (for header probes of large files)."""
    fs, path = get_fs(url)
    return RetryingReader(lambda _: fs.open(path, "rb"), url)


_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def naming(url: str, *unnamed: str) -> Iterator[None]:
    """Put `url` on a disk-full OSError raised in the block that names no file (or only one of `unnamed`,
    a temp file): a write that hits a full disk raises ENOSPC without a name, and the error line must
    say which output could not be written. (Other errors may come from reading inputs: left alone.)"""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS and (exc.filename is None or exc.filename in unnamed):
            exc.filename = url
        raise


@contextlib.contextmanager
def atomic_local_path(url: str) -> Iterator[str]:
    """Yield a local temp file path; on success it becomes `url`, on failure it is removed."""
    fs, path = get_fs(url)
    local = isinstance(fs, LocalFileSystem)
    folder = os.path.dirname(path) if local else None
    if local:
        os.makedirs(folder or ".", exist_ok=True)
    if local:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=folder)
    else:
        fd, tmp = staging_temp("-" + os.path.basename(path))
    os.close(fd)
    try:
        with naming(url if local else f"{staging_dir()} (staging {url})", tmp):
            yield tmp
            if local:
                os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual umask mode
                os.replace(tmp, path)
            else:  # one whole PUT, so a retry after a dropped upload is safe
                retry_io(lambda: fs.put_file(tmp, path), f"writing {url}")
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


def staging_dir() -> str:
    """Where uploads to object storage are staged: one folder under the system temp, so that what a
    killed run left there can be found and removed (files are named after the pid that wrote them)."""
    folder = os.path.join(tempfile.gettempdir(), "geo-ssl-staging")
    os.makedirs(folder, exist_ok=True)
    return folder


def staging_temp(suffix: str = "") -> tuple[int, str]:
    """(fd, path) of a new local temp file for a later upload, named `.tmp-{pid}-...`."""
    return tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-", suffix=suffix, dir=staging_dir())


def sweep_staging() -> int:
    """Delete staged uploads whose writer is gone (a run killed mid-upload); return how many."""
    folder, n = staging_dir(), 0
    for name in os.listdir(folder):
        pid = name.split("-")[1] if name.startswith(".tmp-") and name.count("-") >= 2 else ""
        if not pid.isdigit() or int(pid) == os.getpid() or procs.running(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(folder, name))
            n += 1
    return n


def remove_stale_temps(url_dir: str) -> int:
    """Delete temp files a killed run left behind: in a local output folder, or, for an output on object
    storage, its staged uploads in the local staging folder; return how many."""
    fs, path = get_fs(url_dir)
    if not isinstance(fs, LocalFileSystem):
        return sweep_staging()
    if not os.path.isdir(path):
        return 0
    n = 0
    for name in os.listdir(path):
        if name.startswith(".tmp-"):
            os.unlink(os.path.join(path, name))
            n += 1
    return n
