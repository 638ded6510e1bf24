"""`geo-pretrain` refuses impossible runs with one line (exit 2) before any work, resumes to the planned
end after --max-steps, and leaves no checkpoint temp behind a kill -9 (issue 7: items 4, 5, 11, 15, 17,
18, 25, 27). CLI cases run the real command in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.trainer.checkpoint import LAST
from geo_ssl.training.trainer.cli import main
from geo_ssl.training.trainer.config import PretrainConfig
from geo_ssl.training.trainer.loop import pretrain
from geo_ssl.training.trainer.run_log import read_metrics
from tests.shard_fixtures import make_tiny_shards

REPO = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "GEO_SSL_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
TINY = [
    "--arch", "resnet18", "--image-size", "32", "--batch-size", "8", "--moco-k", "16", "--num-workers", "0",
    "--knn-every", "0", "--log-every", "1", "--shuffle-buffer", "8", "--moco-m", "0.9",
]  # fmt: skip


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """16 train locations in clusters 0..3, and a build-folder card that says k = 4."""
    folder = tmp_path_factory.mktemp("shards")
    make_tiny_shards(folder, n_locations=16, n_shards=2, split="train", image_size=40, n_clusters=4)
    (folder / "index").mkdir()
    (folder / "index" / "cluster_stats.json").write_text(json.dumps({"k": 4}))
    return str(folder)


def geo_pretrain(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "geo_ssl.training.trainer.cli", *args]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert err.startswith("geo-pretrain: error:") and "\n" not in err, err[-2000:]
    for needle in needles:
        assert needle in err, err


def geo_pretrain_here(capsys, *args: str) -> subprocess.CompletedProcess:
    """geo-pretrain's main() in this process, where torch is imported already (a subprocess spends about 4 s
    importing it): the refusals take the same code path."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), stop.value.code, out, err)


def test_bad_flags_and_paths_are_one_line_before_any_work(shards, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    cases = [
        (["--lr", "nan"], "lr = nan must be a finite number"),  # was: silently the default lr
        (["--temperature", "inf"], "temperature = inf must be a finite number"),  # was: accepted
        (["--momentum", "nan"], "momentum = nan"),
        (["--config", str(tmp_path / "folder")], "is a folder; give a TOML file"),  # was: IsADirectoryError
        (["--data", str(tmp_path / "missing")], "no shards at"),  # was: "no cluster count found"
        (["--out", str(tmp_path / "file")], "exists and is not a folder"),  # was: FileExistsError
        (["--out", str(tmp_path / "file" / "run")], "is not a folder"),
        (["--out", "/proc/geo-ssl-run"], "cannot write in /proc"),  # unwritable even for root
    ]
    for i, (extra, needle) in enumerate(cases):
        base = ["--data", shards, "--out", str(tmp_path / "run"), *TINY]
        t0 = time.monotonic()
        # the real command in a subprocess for the last case, the same main() in this process for the others
        proc = (
            geo_pretrain(*base, *extra) if i == len(cases) - 1 else geo_pretrain_here(capsys, *base, *extra)
        )
        one_line_error(proc, needle)
        assert time.monotonic() - t0 < 30
    assert not (tmp_path / "run").exists()  # nothing was created for a refused run


def test_batch_larger_than_split_is_refused(shards, tmp_path):
    # 16 locations; with --epoch-samples the epoch is long enough, but each batch of 32 would hold
    # every location twice (false negatives)
    proc = geo_pretrain("--data", shards, "--out", str(tmp_path / "run"), *TINY, "--batch-size", "32",
                        "--moco-k", "64", "--epoch-samples", "320")  # fmt: skip
    one_line_error(proc, "--batch-size 32 is larger than split 'train'", "16 locations")


def test_n_clusters_below_the_data_is_refused_at_start(shards, tmp_path):
    proc = geo_pretrain("--data", shards, "--out", str(tmp_path / "run"), *TINY, "--n-clusters", "2")
    one_line_error(proc, "--n-clusters 2 is below the 4 geo clusters", "cluster_stats.json")
    assert not (tmp_path / "run" / LAST).exists()


def test_cluster_id_out_of_range_names_the_sample(tmp_path):
    # shards without a card: only the samples can tell; the first one of a cluster >= 2 stops the run
    make_tiny_shards(tmp_path / "s", n_locations=16, n_shards=1, split="train", image_size=40, n_clusters=4)
    cfg = PretrainConfig(data=str(tmp_path / "s"), out=str(tmp_path / "run"), arch="resnet18", image_size=32,
                         batch_size=8, moco_k=16, num_workers=0, knn_every=0, n_clusters=2,
                         shuffle_buffer=8, epochs=1)  # fmt: skip
    with pytest.raises(GeoSSLError, match=r"sample train-\S+: geo cluster [23] is outside the head's 0\.\.1"):
        pretrain(cfg)


def test_plain_resume_after_max_steps_runs_to_the_planned_end(shards, tmp_path, capsys):
    out = tmp_path / "run"
    # 16 locations / batch 8 = 2 steps per epoch, 2 epochs planned = 4 steps; this invocation stops at 2
    main(["--data", shards, "--out", str(out), *TINY, "--epochs", "2", "--max-steps", "2"])
    assert torch.load(out / LAST, weights_only=True)["step"] == 2
    stale = out / ".tmp-4242-abcd1234-checkpoint-last.pt"  # as a kill -9 mid-write used to leave
    stale.write_bytes(b"\0" * 4096)
    proc = geo_pretrain("--out", str(out), "--resume")  # nothing else: the rest comes from RUN/config.toml
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "steps 2..4 of 4" in proc.stderr and "2 written + 0 rejected + 2 skipped" in proc.stdout
    assert "removed 1 temp file(s)" in proc.stderr and not stale.exists()
    assert torch.load(out / LAST, weights_only=True)["step"] == 4
    assert [r["step"] for r in read_metrics(str(out), "train")] == [1, 2, 3, 4]
    capsys.readouterr()
    main(["--out", str(out), "--resume"])  # the run is complete: says so, and exits 0
    assert (
        "nothing to train: the checkpoint is at step 4, already at the planned end" in capsys.readouterr().err
    )


def test_kill9_mid_checkpoint_write_leaves_no_temp_and_keeps_the_old_checkpoint(tmp_path):
    url = tmp_path / "run" / LAST
    script = f"""
import os, signal, torch
from geo_ssl.training.trainer import checkpoint
checkpoint.save_checkpoint({str(url)!r}, {{"step": 1, "w": torch.zeros(4)}})
def dying_save(obj, f, *a, **k):
    f.write(b"x" * (8 << 20))  # 8 MB of a checkpoint on disk, then the process is killed
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
checkpoint.save_checkpoint({str(url)!r}, {{"step": 2, "w": torch.ones(4)}})
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert sorted(os.listdir(url.parent)) == [LAST]  # was: a .tmp-*-checkpoint-last.pt of 8 MB for good
    assert torch.load(url, weights_only=True)["step"] == 1


def test_kill9_then_resume_continues_from_the_last_checkpoint(shards, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "geo_ssl.training.trainer.cli", "--data", shards, "--out", str(out), *TINY,
           "--n-clusters", "4", "--epochs", "500", "--ckpt-every", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(read_metrics(str(out), "train")) < 3:  # checkpoints every 2 steps
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert not [p for p in os.listdir(out) if p.startswith(".tmp-")]
    saved = torch.load(out / LAST, weights_only=True)["step"]
    assert saved >= 2 and saved % 2 == 0  # the last --ckpt-every step (a kill mid-write keeps the one before)
    main(["--out", str(out), "--resume", "--max-steps", str(saved + 1)])
    steps = [r["step"] for r in read_metrics(str(out), "train")]
    assert steps == list(range(1, saved + 2))  # records after the checkpoint were dropped, none repeat
    assert torch.load(out / LAST, weights_only=True)["step"] == saved + 1
