"""`geo-eval` refuses impossible flags and unusable output paths with one line and exit 2, before loading
weights or data (issue 7: items 11, 15, 20). Real subprocesses of the installed command's module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def geo_eval(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "geo_ssl.training.evaluation.cli", *args]
    env = {**os.environ, "GEO_SSL_PROGRESS": "0"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_bad_flags_and_outputs_are_one_line_exit_2(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    base = ["--weights", "random", "--arch", "resnet18", "--data", str(tmp_path)]
    cases = [
        (["knn", *base, "--k", "-5"], "--k -5: must be >= 1"),  # was: a traceback
        (["knn", *base, "--k", "0"], "--k 0: must be >= 1"),  # was: "knn top-1: 0.00%"
        (["knn", *base, "--t", "0"], "--t 0.0: must be a finite number > 0"),  # was: 0.00%
        (["knn", *base, "--t", "inf"], "--t inf: must be a finite number > 0"),
        (["knn", *base, "--max-bank", "-1"], "--max-bank -1: must be >= 0"),
        (["linear-probe", *base, "--lr", "nan"], "--lr nan: must be a finite number > 0"),
        (["linear-probe", *base, "--weight-decay", "nan"], "--weight-decay nan"),
        (["linear-probe", *base, "--epochs", "0"], "--epochs 0: must be > 0"),
        # was: a traceback after the whole evaluation had run
        (["knn", *base, "--out", str(tmp_path / "folder")], "is a folder; give a file name"),
        (["knn", *base, "--out", str(tmp_path / "file" / "r.json")], "is not a folder"),
        (["knn", *base, "--out", "/proc/geo-eval.json"], "cannot write in /proc"),
        # was: IsADirectoryError
        (["knn", "--weights", str(tmp_path / "folder"), "--data", str(tmp_path)], "folder"),
    ]
    for args, needle in cases:
        proc = geo_eval(*args)
        err = proc.stderr.strip()
        assert proc.returncode == 2, (args, err[-2000:])
        assert err.startswith("geo-eval: error:") and "\n" not in err and needle in err, (args, err)
        assert "top-1" not in proc.stdout
