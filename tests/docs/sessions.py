"""The per-page sessions: one bash process and one Python process, as a user's terminal and REPL would be.

Bash: each command is written to a file and sourced by a long-lived ``bash`` (so ``export``, ``cd`` and ``&``
jobs persist), stdin from /dev/null, stdout and stderr merged into one file in order; the exit status comes
back on bash's own stdout, which user commands never write to. The session leads its own process group, so
``close()`` ends background jobs too.

Python: a worker process (``pyworker.py``) reads requests from one pipe and answers on another, passed as
extra fds, so user code printing, or a subprocess writing to fd 1/2, cannot corrupt the protocol.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

WORKER = Path(__file__).with_name("pyworker.py")
_BOOT = (
    "import importlib.util as u, sys; s = u.spec_from_file_location('_docs_pyworker', sys.argv[1]); "
    "m = u.module_from_spec(s); s.loader.exec_module(m); m.main(int(sys.argv[2]), int(sys.argv[3]))"
)


class SessionDied(RuntimeError):
    """The session's process ended (a timeout killed it, or user code exited it)."""


@dataclass
class Outcome:
    exit_code: int | None  # None: timed out
    output: str
    seconds: float


def session_env(workspace: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every session starts from: the venv's bin first on PATH, HOME inside the workspace."""
    # A reader's shell: help text wraps at 80, and no geo-ssl setting of the caller's (the suite's conftest
    # sets GEO_SSL_PROGRESS=0, which also hides progress notes the pages show)
    env = {
        k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES") and not k.startswith("GEO_SSL_")
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(workspace / ".home")
    env["MPLBACKEND"] = "Agg"
    env["OMP_NUM_THREADS"] = "1"
    env["GEO_SSL_RUN_CACHE"] = str(workspace / ".run-cache")
    env["PYTHONUNBUFFERED"] = "1"  # stdout and stderr interleave as on a terminal
    env.update(extra or {})
    (workspace / ".home").mkdir(parents=True, exist_ok=True)
    return env


def _end_group(proc: subprocess.Popen, grace_s: float = 2.0) -> None:
    """SIGTERM the process group led by ``proc``, SIGKILL what is left after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 0.5)
        while time.monotonic() < deadline:
            proc.poll()
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            if _only_zombies(proc.pid):
                break
            time.sleep(0.05)
        else:
            continue
        break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _only_zombies(pgid: int) -> bool:
    """Whether every process left in group ``pgid`` is a zombie (nothing left to stop)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return False
    return True


def _read_line(fd: int, buffer: bytearray, deadline: float) -> bytes | None:
    """The next line from ``fd``; None on timeout; raises SessionDied on end of file."""
    while b"\n" not in buffer:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            raise SessionDied("session process ended")
        buffer.extend(chunk)
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


class BashSession:
    """A bash process that runs commands one at a time, keeping shell state between them."""

    def __init__(self, workspace: Path, env: dict[str, str]) -> None:
        self.workspace, self.env = workspace, env
        self.tmp = Path(tempfile.mkdtemp(prefix="docs-bash-"))
        self._n = 0
        self._start()

    def _start(self) -> None:
        self._log = open(self.tmp / "bash-stderr.log", "ab")  # closed in close()
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=self.workspace,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )
        self._buffer = bytearray()

    def run(self, text: str, timeout: float) -> Outcome:
        """Source ``text`` in the session; on a timeout the session's processes are ended and it restarts."""
        self._n += 1
        script, out = self.tmp / f"cmd-{self._n}.sh", self.tmp / f"out-{self._n}.txt"
        script.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        marker = f"__docs_done_{os.getpid()}_{self._n}"
        line = f"{{ source {_quote(script)}; }} </dev/null >{_quote(out)} 2>&1; echo {marker} $?\n"
        start = time.monotonic()
        try:
            self.proc.stdin.write(line.encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise SessionDied("the bash session had ended before this command") from None
        deadline = start + timeout
        code: int | None = None
        try:
            while True:
                got = _read_line(self.proc.stdout.fileno(), self._buffer, deadline)
                if got is None:
                    break
                if got.startswith(marker.encode() + b" "):
                    code = int(got.split()[1])
                    break
        except SessionDied:
            code = self.proc.wait()
            output = out.read_text(encoding="utf-8", errors="replace") if out.exists() else ""
            self.close(keep_tmp=True)
            self._start()
            return Outcome(code, output + f"\n[the bash session exited with status {code}; restarted]", 0.0)
        seconds = time.monotonic() - start
        if code is None:
            self.close(keep_tmp=True)
            self._start()
        output = out.read_text(encoding="utf-8", errors="replace") if out.exists() else ""
        return Outcome(code, output, seconds)

    def close(self, keep_tmp: bool = False) -> None:
        """End the session's whole process group (background jobs included)."""
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        _end_group(self.proc)
        self.proc.stdout.close()
        self._log.close()
        if not keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "'\\''") + "'"


class PythonSession:
    """A Python process holding one namespace for a page's python and pycon blocks."""

    def __init__(self, workspace: Path, env: dict[str, str]) -> None:
        self.workspace, self.env = workspace, env
        self.tmp = Path(tempfile.mkdtemp(prefix="docs-python-"))
        self.proc: subprocess.Popen | None = None
        self.lost: str | None = None  # why an earlier namespace was lost, for the next failure message

    def _start(self) -> None:
        req_r, self._req_w = os.pipe()
        self._resp_r, resp_w = os.pipe()
        self._out = open(self.tmp / "output.txt", "ab")  # closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(WORKER), str(req_r), str(resp_w)],
            cwd=self.workspace,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            pass_fds=(req_r, resp_w),
            start_new_session=True,
        )
        os.close(req_r)
        os.close(resp_w)
        self._buffer = bytearray()

    def request(self, kind: str, block_source: str, filename: str, lineno: int, timeout: float) -> dict:
        """Run a block (``kind`` is "exec" or "doctest"); returns the worker's answer plus "output" and
        "seconds". A timeout or a dead worker gives ok=False and a fresh (empty) namespace next time."""
        if self.proc is None:
            self._start()
        offset = (self.tmp / "output.txt").stat().st_size
        req = {"kind": kind, "source": block_source, "filename": filename, "lineno": lineno}
        start = time.monotonic()
        try:
            os.write(self._req_w, (json.dumps(req) + "\n").encode())
            line = _read_line(self._resp_r, self._buffer, start + timeout)
            answer = json.loads(line) if line is not None else None
        except (SessionDied, BrokenPipeError):
            self.proc.wait()
            answer = {"ok": False, "error": f"the Python session exited (status {self.proc.returncode})"}
            self._restart("it exited")
        if answer is None:
            answer = {"ok": False, "error": f"timed out after {timeout:g} s"}
            self._restart(f"a block timed out after {timeout:g} s")
        with open(self.tmp / "output.txt", "rb") as f:
            f.seek(offset)
            answer["output"] = f.read().decode("utf-8", errors="replace")
        answer["seconds"] = time.monotonic() - start
        return answer

    def _restart(self, why: str) -> None:
        self.close(keep_tmp=True)
        self.lost = f"the Python namespace was reset: {why}"

    def close(self, keep_tmp: bool = False) -> None:
        if self.proc is not None:
            os.close(self._req_w)
            _end_group(self.proc)
            os.close(self._resp_r)
            self._out.close()
            self.proc = None
        if not keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
