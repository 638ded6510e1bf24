"""Is a process still running? One answer for the output lock, the staging sweep and the worker watchdog.

A process killed with kill -9 stays in the process table as a zombie until its parent reaps it, and a
parent that never does (a container's PID 1 without an init, a parent killed too) keeps it there for
good. `os.kill(pid, 0)` succeeds on a zombie, so a zombie is recognised from /proc (Linux) and counted
as gone: it holds no files and writes nothing.
"""

from __future__ import annotations

import os
import threading
import time

#: How often a worker checks that its run is still alive (seconds).
WATCH_INTERVAL = 0.2


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/PID/stat after the command name (which may hold spaces or parentheses); None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (Linux), to tell a reused pid from its first owner."""
    fields = _stat_fields(pid)
    return fields[19].decode() if fields and len(fields) > 19 else None


def is_zombie(pid: int) -> bool:
    """True when `pid` has exited and waits to be reaped by its parent."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] == b"Z"


def running(pid: int) -> bool:
    """True when `pid` exists and has not exited (a process of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not is_zombie(pid)


def exit_with_run(run_pid: int) -> None:
    """Pool initializer (and Dask worker plugin): end this worker as soon as the run `run_pid` is gone.

    After a kill -9 of the run, pool workers would otherwise wait on their task queue forever (each holds
    the queue's write end, so none sees EOF) and finish the task in hand, writing outputs that race a
    rerun; multiprocessing's resource tracker lives as long as they do. A daemon thread polls the run's
    pid (and, for a direct child, its parent pid: a reused pid is not mistaken for the run). Here, not in
    `executor`, so that both engines (executor, executor_dask) import it without importing each other."""
    parent = os.getppid()
    direct_child = parent == run_pid

    def run_is_alive() -> bool:
        if direct_child and os.getppid() != parent:
            return False
        try:
            os.kill(run_pid, 0)
        except (ProcessLookupError, PermissionError):  # gone, or the pid now belongs to another user
            return False
        return not is_zombie(run_pid)  # killed but not yet reaped by its parent: gone as well

    def watch() -> None:
        while run_is_alive():
            time.sleep(WATCH_INTERVAL)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-run", daemon=True).start()
