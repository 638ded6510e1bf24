"""The run folder of `geo-pretrain`: checked before any work, held by one run at a time, swept of temps.

- `prepare_run_folder` turns a path that is a file, lies under a file, or cannot be written into a
  one-line GeoSSLError before the model is built.
- `RunLock` is an exclusive `flock` on RUN/.lock for the life of the run: a second geo-pretrain on the
  same --out stops at once ("another run is using ..."). The kernel drops the lock when the process
  dies, kill -9 included, so there is never a stale lock to remove.
- `remove_stale_temps` deletes the `.tmp-*` files a killed process left (checkpoints are written
  without a name until the final rename, see checkpoint.py, but metrics and config rewrites and older
  versions used named temps). It runs under the lock, so it never removes a live run's temp.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile

from geo_ssl.pipeline.common.errors import GeoSSLError

LOCK = ".lock"
TEMP_PREFIX = ".tmp-"


def output_problem(path: str, *, folder: bool) -> str | None:
    """Why `path` cannot be written (as a folder, or as a file in an existing folder), or None."""
    path = os.path.abspath(path)
    if folder and os.path.exists(path) and not os.path.isdir(path):
        return "exists and is not a folder"
    if not folder and os.path.isdir(path):
        return "is a folder; give a file name"
    if not folder and os.path.exists(path) and not os.path.isfile(path):
        return "exists and is not a regular file"
    probe = path if folder and os.path.isdir(path) else os.path.dirname(path)
    while not os.path.exists(probe):  # the nearest existing ancestor must be a writable folder
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return f"{probe} is not a folder"
    try:  # os.access is wrong for root and for read-only mounts: try it
        fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX + "probe-", dir=probe)
    except OSError as exc:
        return f"cannot write in {probe} ({exc.strerror or exc})"
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):  # another rank's temp sweep may have taken it
        os.unlink(name)
    return None


def prepare_run_folder(out: str) -> None:
    """Create the run folder, or raise one line saying why it cannot be."""
    problem = output_problem(out, folder=True)
    if problem:
        raise GeoSSLError(f"--out {out}: {problem}")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise GeoSSLError(f"--out {out}: cannot create the run folder ({exc.strerror or exc})") from None


class RunLock:
    """Exclusive lock on RUN/.lock held while a run uses the folder (released by the kernel on any exit)."""

    def __init__(self, out: str) -> None:
        self.path = os.path.join(out, LOCK)
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                holder = _read_pid(self.path)
                who = f" (pid {holder})" if holder else ""
                raise GeoSSLError(
                    f"--out {os.path.dirname(self.path)}: another run is using this folder{who}; "
                    "wait for it, stop it, or choose another --out"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def remove_stale_temps(out: str) -> list[str]:
    """Delete `.tmp-*` files in the run folder (call with the RunLock held); return their names."""
    removed = []
    for name in sorted(os.listdir(out)):
        if name.startswith(TEMP_PREFIX):
            try:
                os.unlink(os.path.join(out, name))
            except FileNotFoundError:
                continue
            removed.append(name)
    return removed
