"""The library's result lines and notes go through `logging` (stdout for result lines, stderr for the rest),
so a Python caller silences or routes them the usual way; progress bars show only on a terminal unless
GEO_SSL_PROGRESS forces them; and no library module prints on its own."""

from __future__ import annotations

import ast
import fcntl
import json
import logging
import os
import pty
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest

from geo_ssl.pipeline.build import BUILD_RECORD, check_same_settings
from geo_ssl.pipeline.cluster import cluster
from geo_ssl.pipeline.common import logs
from tests.pipeline.test_cluster import random_points, write_locations

REPO = Path(__file__).resolve().parents[1]
#: Modules that are programs (argument parsing, demos): they print their own output.
PROGRAMS = {
    "pipeline/demo.py",
    "pipeline/geoimagenet/demo.py",
    "pipeline/geoimagenet/flickr_standin.py",
    "training/demo.py",
}
SYNTH = [sys.executable, "-m", "geo_ssl.pipeline.cli", "synth-fmow", "--locations", "3", "--workers", "1"]
SYNTH_LINE = "synth-fmow: 3 locations in = 3 written + 0 rejected + 0 skipped [ok]"


@pytest.fixture()
def geo_logger(monkeypatch) -> Iterator[logging.Logger]:
    """The "geo_ssl" logger as a fresh process has it, progress notes on; put back afterwards."""
    logger = logs.get_logger(logs.LOGGER)
    saved = (logger.level, logger.propagate, list(logger.handlers))
    monkeypatch.delenv(logs.ENV_LEVEL, raising=False)
    monkeypatch.delenv("GEO_SSL_PROGRESS", raising=False)
    monkeypatch.setattr(logs, "_propagating", False)
    logger.setLevel(logging.INFO)
    yield logger
    logger.setLevel(saved[0])
    logger.propagate = saved[1]
    logger.handlers[:] = saved[2]


def _rebuild(out: Path, k: int) -> str:
    """A library call that says what it did: replace a recorded build of k=1 with one of k=`k`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / BUILD_RECORD).write_text(json.dumps({"source": "fmow", "k": 1}))
    check_same_settings(str(out), {"source": "fmow", "k": k}, rebuild=True)
    return f"build: --rebuild: removed the build of k 1, not k {k} from {out} (1 entries)"


def test_result_lines_on_stdout_silenced_and_routed(geo_logger, tmp_path, capfd, caplog) -> None:
    line = _rebuild(tmp_path / "a", 2)  # nothing configured: the line a CLI user reads, on stdout
    assert capfd.readouterr() == (line + "\n", "")
    index = write_locations(tmp_path / "index", random_points(20, 1))
    cluster(index, k=3, seed=0)  # a progress note, on stderr
    assert capfd.readouterr() == ("", "cluster: fitting k=3 on 20 train locations (seed 0)\n")

    geo_logger.setLevel(logging.WARNING)  # silenced the usual way
    _rebuild(tmp_path / "b", 2)
    cluster(index, k=3, seed=0)
    assert capfd.readouterr() == ("", "")

    geo_logger.setLevel(logging.INFO)
    logs.propagate()  # routed: the root's handlers get the records, the console nothing
    with caplog.at_level(logging.INFO):
        line = _rebuild(tmp_path / "c", 3)
        cluster(index, k=3, seed=0)
    assert capfd.readouterr() == ("", "")
    result = next(r for r in caplog.records if r.getMessage() == line)
    assert result.name == "geo_ssl.pipeline.build" and result.levelno == logging.INFO and result.stdout
    note = next(r for r in caplog.records if r.getMessage().startswith("cluster: fitting"))
    assert note.name == "geo_ssl.pipeline.cluster" and not getattr(note, "stdout", False)


def test_propagate_holds_for_modules_imported_after_it(tmp_path) -> None:
    """The usual order in a script: propagate(), configure logging, then use the stages (whose modules
    import later, e.g. through geo_ssl's lazy names): their records must reach the root's handlers."""
    script = f"""
import json, logging, sys
from pathlib import Path
from geo_ssl.pipeline.common import logs
logs.propagate()
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="ROOT %(name)s: %(message)s")
out = Path({str(tmp_path / "out")!r}); out.mkdir()
(out / "build.json").write_text(json.dumps({{"source": "fmow", "k": 1}}))
from geo_ssl.pipeline.build import check_same_settings  # the stage's module imports only now
check_same_settings(str(out), {{"source": "fmow", "k": 2}}, rebuild=True)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ROOT geo_ssl.pipeline.build: build: --rebuild: removed"), proc.stdout
    assert proc.stderr == ""


def _synth(tmp_path: Path, name: str, progress: str | None, tty: bool = False) -> tuple[str, str]:
    """Run synth-fmow with stdout piped and stderr piped (or on a pseudo-terminal); (stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "GEO_SSL_PROGRESS"}
    env["OMP_NUM_THREADS"] = "1"
    if progress is not None:
        env["GEO_SSL_PROGRESS"] = progress
    argv = [*SYNTH, "--out", str(tmp_path / name)]
    if not tty:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout, proc.stderr
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # tqdm sizes bars to it
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=follower) as proc:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(leader)
        out = proc.stdout.read().decode()
        assert proc.wait(timeout=60) == 0
    return out, b"".join(chunks).decode()


def test_progress_bars_only_on_a_terminal_unless_forced(tmp_path) -> None:
    out, err = _synth(tmp_path, "piped", None)  # a pipe, a log file: no bar redraws, the same summary
    assert out == SYNTH_LINE + "\n" and "loc/s" not in err and "%|" not in err, err
    out, err = _synth(tmp_path, "forced", "1")
    assert out == SYNTH_LINE + "\n" and "100%|" in err and "loc/s" in err, err
    out, err = _synth(tmp_path, "tty", None, tty=True)  # a terminal: the bar, as before
    assert out == SYNTH_LINE + "\n" and "100%|" in err and "loc/s" in err, err
    out, err = _synth(tmp_path, "off", "0", tty=True)
    assert out == SYNTH_LINE + "\n" and "%|" not in err, err


def _prints_outside_main(path: Path) -> list[int]:
    """Lines of `print(...)` calls not inside a function named main (a command's entry point)."""
    found: list[int] = []

    def visit(node: ast.AST, in_main: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_main or (
                isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) and child.name == "main"
            )
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Name) and child.func.id == "print":
                if not in_main:
                    found.append(child.lineno)
            visit(child, inside)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def test_library_modules_do_not_print() -> None:
    offenders = []
    for top in ("pipeline", "training", "schemas"):
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if path.name == "cli.py" or rel in PROGRAMS:
                continue
            offenders += [f"{rel}:{n}" for n in _prints_outside_main(path)]
    assert not offenders, (
        "library code logs through geo_ssl.pipeline.common.logs.get_logger (result lines with "
        f"extra=logs.STDOUT) instead of print: {offenders}"
    )
