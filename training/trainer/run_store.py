"""A run folder on object storage (`geo-pretrain --out s3://bucket/run`): what stays local, what is uploaded.

Object stores cannot append, so metrics.jsonl and the TensorBoard event files are written to a local
working copy (the *run cache*, `$GEO_SSL_RUN_CACHE/<hash of the URL>`, default
`~/.cache/geo-ssl/runs/...`) and uploaded after every checkpoint and at the end; the checkpoint itself
is uploaded whole (checkpoint.py), config.toml is written with one PUT. A kill between a checkpoint and
the metrics upload loses nothing that `--resume` needs: the next run downloads metrics.jsonl and tb/
from the bucket into a fresh cache and drops records newer than the checkpoint, as for a local folder.

One run per folder: the lock object `.geo-ssl.lock` (outlock.py's record, written with a conditional PUT)
stands in for the local flock on RUN/.lock. A run on object storage is typically a preemptible cloud job
that may die without a chance to remove it, and another host cannot tell whether its writer is alive, so
the holder refreshes a `heartbeat` time in it every `GEO_SSL_RUN_LOCK_HEARTBEAT` seconds (default 60);
a lock whose heartbeat is older than `GEO_SSL_RUN_LOCK_STALE` seconds (default 600) is taken over with a
note. A lock without a heartbeat (another kind of writer) is never taken over by age.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
from typing import Any

from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.retry import retry_io

ENV_CACHE = "GEO_SSL_RUN_CACHE"
UPLOADED = ("metrics.jsonl", "tb")  # what the run cache holds and uploads


ENV_HEARTBEAT = "GEO_SSL_RUN_LOCK_HEARTBEAT"
ENV_STALE = "GEO_SSL_RUN_LOCK_STALE"


def _env_seconds(name: str, default: float) -> float:
    try:
        return max(0.01, float(os.environ.get(name, default)))
    except ValueError:
        raise GeoSSLError(f"{name}={os.environ[name]!r}: give a number of seconds") from None


def _stale(holder: dict[str, Any] | None) -> str | None:
    """Why a lock holder is presumed dead (its pid is gone from this host, or its heartbeat stopped)."""
    from geo_ssl.pipeline.common import outlock

    if not holder:
        return None
    if outlock._holder_gone(holder):
        return "that process is gone"
    beat, limit = holder.get("heartbeat"), _env_seconds(ENV_STALE, 600)
    if isinstance(beat, int | float) and not isinstance(beat, bool) and time.time() - beat > limit:
        return f"no heartbeat for {time.time() - beat:.0f} s (> {ENV_STALE}={limit:g})"
    return None


class _Heartbeat:
    """Rewrites the lock object with a fresh heartbeat time every `every` s while the run holds it."""

    def __init__(self, fs: Any, path: str, me: dict[str, Any], every: float) -> None:
        self.fs, self.path, self.me = fs, path, dict(me)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(every,), name="run-lock-heartbeat", daemon=True
        )
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            with contextlib.suppress(Exception):  # storage down: the next beat tries again
                holder = json.loads(self.fs.cat_file(self.path))
                if holder.get("token") != self.me["token"]:
                    return  # taken over (we were presumed dead): leave it to its new holder
                self.me["heartbeat"] = time.time()
                self.fs.pipe_file(self.path, json.dumps(self.me).encode())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        with contextlib.suppress(Exception):  # nothing to release, or storage is down
            holder = json.loads(self.fs.cat_file(self.path))
            if holder.get("token") == self.me["token"]:
                self.fs.rm_file(self.path)


def run_cache_root() -> str:
    return os.environ.get(ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".cache", "geo-ssl", "runs")


class RunStore:
    """`local`: the folder metrics and TensorBoard are written to; `push()` copies them to a remote --out."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.remote = not fsio.is_local(out)
        if self.remote:
            digest = hashlib.sha256(out.rstrip("/").encode()).hexdigest()[:16]
            tail = "".join(
                c if c.isalnum() or c in "-_." else "_" for c in out.rstrip("/").rsplit("/", 1)[-1]
            )
            self.local = os.path.join(run_cache_root(), f"{tail[:40]}-{digest}")
        else:
            self.local = out
        self._pushed: dict[str, tuple[int, int]] = {}
        self._lock: Any = None

    def lock(self, command: str) -> str | None:
        """Take the folder's lock object (remote --out only; a local folder uses run_folder.RunLock).
        Returns a note when a stale lock (no heartbeat for GEO_SSL_RUN_LOCK_STALE s) was taken over."""
        from geo_ssl.pipeline.common import outlock

        url = fsio.join(self.out, outlock.LOCK_NAME)
        fs, path = fsio.get_fs(url)
        me = {**outlock._my_record(command), "heartbeat": time.time()}
        note = None
        try:
            retry_io(lambda: fs.pipe_file(path, json.dumps(me).encode(), mode="create"), f"writing {url}")
        except FileExistsError:
            exists = retry_io(lambda: fs.exists(path), f"reading {url}")
            holder = outlock._parse(fsio.read_bytes(url)) if exists else None
            why = _stale(holder)
            if holder and holder.get("token") == me["token"]:
                pass  # our own create, whose answer was lost: the retry found it done
            elif holder and why:
                note = f"took over the lock of pid {holder.get('pid')} on {holder.get('host')}: {why}"
                retry_io(lambda: fs.pipe_file(path, json.dumps(me).encode()), f"writing {url}")
            else:
                raise GeoSSLError(f"--out {self.out}: {outlock._describe(holder, url)}") from None
        back = outlock._parse(fsio.read_bytes(url))
        if not back or back.get("token") != me["token"]:
            raise GeoSSLError(f"--out {self.out}: {outlock._describe(back, url)}")
        self._lock = _Heartbeat(fs, path, me, _env_seconds(ENV_HEARTBEAT, 60))
        return note

    def release(self) -> None:
        """Stop the heartbeat and delete the lock object if it is still ours."""
        if self._lock is not None:
            self._lock.stop()
            self._lock = None

    def prepare(self, resume: bool) -> None:
        """A fresh run cache; on --resume, filled with the bucket's metrics.jsonl and tb/."""
        if not self.remote:
            return
        shutil.rmtree(self.local, ignore_errors=True)
        os.makedirs(self.local, exist_ok=True)
        if not resume:
            return
        fs, base = fsio.get_fs(self.out)
        for name in UPLOADED:
            src = f"{base.rstrip('/')}/{name}"
            if not retry_io(lambda src=src: fs.exists(src), f"reading {self.out}"):
                continue
            files = retry_io(lambda src=src: fs.find(src), f"listing {self.out}") if name == "tb" else [src]
            for remote in files:
                rel = remote[len(base.rstrip("/")) + 1 :]
                dst = os.path.join(self.local, *rel.split("/"))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                retry_io(lambda r=remote, d=dst: fs.get_file(r, d), f"reading {self.out}/{rel}")
                st = os.stat(dst)
                self._pushed[rel] = (st.st_size, st.st_mtime_ns)

    def push(self) -> int:
        """Upload the run cache's files that changed since the last push; returns how many."""
        if not self.remote:
            return 0
        fs, base = fsio.get_fs(self.out)
        n = 0
        for name in UPLOADED:
            top = os.path.join(self.local, name)
            paths = [top] if os.path.isfile(top) else []
            for folder, _, names in os.walk(top):
                paths += [os.path.join(folder, f) for f in names]
            for path in sorted(paths):
                rel = os.path.relpath(path, self.local).replace(os.sep, "/")
                st = os.stat(path)
                if self._pushed.get(rel) == (st.st_size, st.st_mtime_ns):
                    continue
                dst = f"{base.rstrip('/')}/{rel}"
                retry_io(lambda p=path, d=dst: fs.put_file(p, d), f"writing {self.out}/{rel}")
                self._pushed[rel] = (st.st_size, st.st_mtime_ns)
                n += 1
        return n
