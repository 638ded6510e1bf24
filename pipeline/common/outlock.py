"""One writer per output folder: a lock file (or lock object) in OUT while a stage writes there.

Two runs into one folder would delete each other's temp files and mix two data sets, so the second
run stops at once with "another run is writing here (pid ..., since ...)" and exit code 2.

- Local folder: `OUT/.geo-ssl.lock` is created with O_CREAT|O_EXCL (atomic, also on NFSv3+) and holds
  pid, host, process start time, command and start time. A lock left by a killed run (kill -9) whose
  pid is gone from this host, is a zombie no one reaps, or now belongs to a younger process, is stale
  and is taken over. A lock our own failed write left empty (disk full) is removed at once.
- Object storage: the lock object is written with a conditional put (`If-None-Match: *` through s3fs,
  atomic on S3), then read back to confirm it is ours, which also covers filesystems without
  conditional writes (best effort there: two runs starting within the same instant may both pass).
  A lock object from another host cannot be checked for liveness; the message names the host and says
  how to remove it.

Locks are re-entrant within one process, so `build` can hold OUT while its write-shards step runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator

from fsspec.implementations.local import LocalFileSystem

from geo_ssl.pipeline.common import fsio, procs
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.retry import retry_io

LOCK_NAME = ".geo-ssl.lock"
#: A lock file still empty after this long was left by a run killed while creating it.
_EMPTY_GRACE_S = 10.0
_held: dict[str, int] = {}


def _holder_gone(holder: dict) -> bool:
    """True when the holder ran on this host and its process has exited (or the pid was reused)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    pid = holder["pid"]
    if not procs.running(pid):  # exited, a zombie included (see procs.py)
        return True
    started = holder.get("proc_start")
    return started is not None and procs.start_time(pid) not in (None, started)


def _describe(holder: dict | None, lock_url: str) -> str:
    if not holder:
        return (
            f"another run is writing here (its lock {lock_url} is empty or unreadable: a run is starting,"
            f" or one was killed while creating it); if no run is writing here, delete {lock_url}"
        )
    what = f", {holder['command']}" if holder.get("command") else ""
    return (
        f"another run is writing here (pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{what},"
        f" since {holder.get('since', '?')}); wait for it to end, or delete {lock_url} if that run is gone"
    )


def _parse(data: bytes) -> dict | None:
    try:
        holder = json.loads(data)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _my_record(command: str) -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "proc_start": procs.start_time(os.getpid()),
        "command": command,
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "token": uuid.uuid4().hex,
    }


def _acquire_local(path: str, me: dict, lock_url: str) -> None:
    data = json.dumps(me).encode()
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path, "rb") as f:
                    raw = f.read()
                age = time.time() - os.stat(path).st_mtime
            except FileNotFoundError:
                continue  # released meanwhile
            holder = _parse(raw)
            stale = _holder_gone(holder) if holder else age > _EMPTY_GRACE_S
            if not stale:
                raise GeoSSLError(f"{lock_url.rsplit('/', 1)[0]}: {_describe(holder, lock_url)}") from None
            _break_stale(path, raw)
            continue
        try:
            with fsio.naming(lock_url), os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:  # disk full, interrupted: an empty lock of ours must not refuse the rerun
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        return
    raise GeoSSLError(f"{lock_url}: could not take the output lock (it changed hands repeatedly)")


def _break_stale(path: str, stale: bytes) -> None:
    """Move a stale lock aside; if what was moved is not the stale lock we read, put it back."""
    aside = f"{path}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    with open(aside, "rb") as f:
        moved = f.read()
    if moved != stale:
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    os.unlink(aside)


def _acquire_remote(lock_url: str, me: dict) -> None:
    fs, path = fsio.get_fs(lock_url)
    data = json.dumps(me).encode()
    try:
        retry_io(lambda: fs.pipe_file(path, data, mode="create"), f"writing {lock_url}")
    except FileExistsError:
        exists = retry_io(lambda: fs.exists(path), f"reading {lock_url}")
        holder = _parse(fsio.read_bytes(lock_url)) if exists else None
        if holder and holder.get("token") == me["token"]:
            pass  # our own create, whose answer was lost: the retry found it done
        elif holder and _holder_gone(holder):
            retry_io(lambda: fs.pipe_file(path, data), f"writing {lock_url}")  # its run is gone: take over
        else:
            raise GeoSSLError(f"{lock_url.rsplit('/', 1)[0]}: {_describe(holder, lock_url)}") from None
    back = _parse(fsio.read_bytes(lock_url))
    if not back or back.get("token") != me["token"]:
        raise GeoSSLError(f"{lock_url.rsplit('/', 1)[0]}: {_describe(back, lock_url)}")


def _release(lock_url: str, me: dict) -> None:
    fs, path = fsio.get_fs(lock_url)
    try:
        holder = _parse(fs.cat_file(path))
        if holder and holder.get("token") == me["token"]:
            fs.rm_file(path)
    except (FileNotFoundError, OSError):
        pass  # nothing to release, or storage is down: the next run sees our pid is gone


@contextlib.contextmanager
def output_lock(out: str, command: str) -> Iterator[str]:
    """Hold OUT's lock while the block runs; raise GeoSSLError (exit 2) if another live run holds it."""
    lock_url = fsio.join(out, LOCK_NAME)
    if _held.get(lock_url):
        _held[lock_url] += 1
        try:
            yield lock_url
        finally:
            _held[lock_url] -= 1
        return
    fs, path = fsio.get_fs(lock_url)
    me = _my_record(command)
    if isinstance(fs, LocalFileSystem):
        fsio.makedirs(out)
        _acquire_local(path, me, lock_url)
    else:
        _acquire_remote(lock_url, me)
    _held[lock_url] = 1
    try:
        yield lock_url
    finally:
        _held.pop(lock_url, None)
        _release(lock_url, me)


def read_lock(out: str) -> dict | None:
    """The current holder's record, or None when OUT is not locked."""
    url = fsio.join(out, LOCK_NAME)
    return _parse(fsio.read_bytes(url)) if fsio.exists(url) else None
