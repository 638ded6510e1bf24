"""Is a process still running? One answer for the output lock, the staging sweep and the worker watchdog.

A process killed with kill -9 stays in the process table as a zombie until its parent reaps it, and a
parent that never does (a container's PID 1 without an init, a parent killed too) keeps it there for
good. `os.kill(pid, 0)` succeeds on a zombie, so a zombie is recognised from /proc (Linux) and counted
as gone: it holds no files and writes nothing.
"""

from __future__ import annotations

import os


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
