"""geo-pretrain hardening (issue 17): Ctrl-C, a full disk, checkpoint volume, --resume with auto values,
the GPU data path as opt-in. Real processes, real signals, a real file-size limit."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.data.gpu_augment import resolve_data_path
from geo_ssl.training.trainer.checkpoint import LAST, NoSpaceError, save_checkpoint
from geo_ssl.training.trainer.cli import build_parser
from geo_ssl.training.trainer.config import PretrainConfig
from geo_ssl.training.trainer.loop import pretrain
from geo_ssl.training.trainer.run_log import read_metrics
from tests.shard_fixtures import make_tiny_shards
from tests.training.trainer.test_stop_signals import ENV, REPO, group_is_gone, pretrain_cmd, wait_for_steps


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """test_stop_signals' data: 16 locations, 2 steps per epoch of pretrain_cmd's batch 8."""
    folder = tmp_path_factory.mktemp("shards")
    make_tiny_shards(folder, n_locations=16, n_shards=2, split="train", image_size=40, n_clusters=4)
    return str(folder)


def tiny(shards: str, out: Path, **kw) -> PretrainConfig:
    values = dict(
        data=shards, out=str(out), arch="resnet18", image_size=32, batch_size=8, moco_k=16, num_workers=0,
        shuffle_buffer=8, knn_every=0, log_every=1, ckpt_every=1000, epochs=3,
    )  # fmt: skip
    return PretrainConfig(**{**values, **kw})


# ---- item 12: Ctrl-C ---------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["group", "main"])
def test_sigint_checkpoints_the_current_step_and_exits_130(shards, tmp_path, target):
    out = tmp_path / "run"
    # a shell started in the background (no job control) ignores SIGINT, and geo-pretrain keeps an ignored
    # SIGINT ignored (as any program should): the child gets Ctrl-C's default, as from a terminal
    proc = subprocess.Popen(pretrain_cmd(shards, out), cwd=REPO, env=ENV, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        wait_for_steps(proc, out, 3)  # 2 steps per epoch: the workers of the second epoch are running
        (os.killpg if target == "group" else os.kill)(proc.pid, signal.SIGINT)  # Ctrl-C hits the group
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # was: a KeyboardInterrupt traceback, killed by SIGINT, the checkpoint of the last epoch end
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "killed by signal" not in err, err
    steps = [r["step"] for r in read_metrics(str(out), "train")]
    ckpt = torch.load(out / LAST, weights_only=True)
    assert ckpt["step"] == steps[-1] >= 3 and steps == list(range(1, steps[-1] + 1))
    assert f"stopped by signal 2 at step {ckpt['step']}" in err and "continue with --resume" in err
    assert group_is_gone(proc.pid), "loader workers outlived the run"


# ---- item 11: a full disk (here a file-size limit: the same failed write, EFBIG instead of ENOSPC) -------
def test_full_disk_during_a_checkpoint_keeps_the_last_one_and_ends_the_workers(shards, tmp_path):
    out = tmp_path / "run"
    pretrain(tiny(shards, out, n_clusters=4, epochs=500, max_steps=2))  # pretrain_cmd's run, to step 2
    good = (out / LAST).read_bytes()
    limit = 50 << 20  # below the 138 MB checkpoint, far above metrics.jsonl

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [*pretrain_cmd(shards, out), "--resume", "--max-steps", "4"]  # 2 loader workers
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=small_files)  # fmt: skip
    try:
        _, err = proc.communicate(timeout=120)  # was: torch's "unexpected pos" traceback, then a hang
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert time.monotonic() - t0 < 100
    assert proc.returncode == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith(f"geo-pretrain: error: {out}: file too large"), err
    assert "the previous checkpoint-last.pt is kept" in last and "--resume" in last
    assert group_is_gone(proc.pid), "loader workers outlived the run"
    assert (out / LAST).read_bytes() == good  # the last good checkpoint, untouched
    assert not [p for p in os.listdir(out) if p.startswith(".tmp-")]


def test_checkpoint_is_refused_before_writing_when_the_disk_lacks_room(tmp_path):
    url = tmp_path / LAST
    save_checkpoint(str(url), {"step": 1, "w": torch.zeros(4)})
    # a tensor that counts as more bytes than any disk here holds (a view of 4 bytes: no memory needed)
    huge = torch.zeros(1).expand(1 << 50)
    with pytest.raises(
        NoSpaceError, match=rf"{re.escape(str(tmp_path))}: no space left \(\d+ MB free; .* is kept"
    ):
        save_checkpoint(str(url), {"step": 2, "w": huge})
    assert torch.load(url, weights_only=True)["step"] == 1 and os.listdir(tmp_path) == [LAST]


# ---- item 13: no 138 MB checkpoint at every (short) epoch end ------------------------------------------
def _written_bytes() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("wchar:")).split()[1])


def test_short_epochs_do_not_each_write_a_checkpoint(shards, tmp_path):
    cfg = tiny(shards, tmp_path / "run", n_clusters=4, epochs=4)  # 4 epochs of 2 steps
    before = _written_bytes()
    result = pretrain(cfg)
    written = _written_bytes() - before
    ckpt = torch.load(tmp_path / "run" / LAST, weights_only=True)
    assert result["steps"] == 8 and ckpt["step"] == 8
    # what one checkpoint costs here (twice its size where an O_TMPFILE file cannot be named)
    before = _written_bytes()
    save_checkpoint(str(tmp_path / "run" / "again.pt"), ckpt)
    one = _written_bytes() - before
    assert written < 1.5 * one, f"{written / one:.1f} checkpoints written"  # was: 4, one per epoch end


# ---- item 33: an explicit value equal to what 'auto' chose is no config change ----------------------------
def test_resume_accepts_explicit_values_equal_to_the_resolved_auto_ones(tmp_path):
    folder = tmp_path / "shards"
    make_tiny_shards(folder, n_locations=16, n_shards=1, split="train", image_size=40, n_clusters=4)
    (folder / "index").mkdir()
    (folder / "index" / "cluster_stats.json").write_text('{"k": 4}')  # what --n-clusters 0 (auto) picks
    data, out = str(folder), tmp_path / "run"
    pretrain(tiny(data, out, max_steps=1))  # n_clusters, bn_splits and lr auto: 4, 1, 0.0009375
    for explicit in (dict(n_clusters=4), dict(bn_splits=1), dict(lr=0.03 * 8 / 256)):
        pretrain(tiny(data, out, resume=True, max_steps=1, **explicit))  # was: "n_clusters: 0 -> 4"
    with pytest.raises(GeoSSLError, match=r"config differs .*\(n_clusters: 4 -> 8\)"):
        pretrain(tiny(data, out, resume=True, max_steps=2, n_clusters=8))
    assert pretrain(tiny(data, out, resume=True, max_steps=2, n_clusters=4))["steps"] == 2


# ---- item 14: the GPU data path is opt-in ---------------------------------------------------------------
def test_gpu_data_path_is_opt_in():
    assert PretrainConfig().data_path == "cpu"
    assert resolve_data_path("auto", "cuda") == resolve_data_path("cpu", "cuda") == "cpu"  # was: gpu on CUDA
    assert resolve_data_path("gpu", "cpu") == "gpu"
    text = " ".join(build_parser().format_help().split())
    assert "--data-path gpu" in text and "opt-in" in text
