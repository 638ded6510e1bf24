"""Exact epochs under real torchrun (gloo, CPU): 1, 2 and 3 ranks x 0, 1 and 2 loader workers.

Two uneven shards (10 and 20 locations) are fewer than the loader's readers in most of the matrix, so
workers start and stop inside shards. One torchrun launch per world size runs the whole matrix in every
rank (tests/training/data/epoch_probe.py): `pretrain_loader` and `views_loader` must give every location
exactly once per epoch over all ranks and workers, equal steps on every rank, another order in the next
epoch and with another seed, the same batches for the same (seed, epoch) from a new loader and after a
resume at mid-epoch; the eval loader must give every location (or every stored view) exactly once per
pass, the same way every pass. Then a real `geo-pretrain` under torchrun is stopped in the middle of an
epoch by SIGTERM, resumed, killed by SIGKILL mid-epoch and resumed again (`--resume`): every rank trains
on the batches of an uninterrupted run, step for step (tests/training/data/trainer_probe.py).
"""

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

from geo_ssl.training.data.loader import LoaderConfig, pretrain_loader
from geo_ssl.training.trainer.checkpoint import LAST
from geo_ssl.training.trainer.run_log import read_metrics
from tests.shard_fixtures import make_tiny_shards

REPO = Path(__file__).resolve().parents[3]
# CPU and gloo even where a GPU is at hand (two ranks on one GPU would not start)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GEO_SSL_PROGRESS": "0", "PYTHONPATH": str(REPO),
       "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
BATCH = 5  # per rank: 30 locations are 6, 3 and 2 steps on 1, 2 and 3 ranks, nothing dropped


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[str, dict[str, list[str]]]:
    """Two shards of 10 and 20 locations; the truth: every location key with its stored views."""
    import webdataset as wds

    folder = tmp_path_factory.mktemp("uneven")
    paths = make_tiny_shards(folder, n_locations=30, n_shards=2, uneven=True, image_size=40, n_clusters=4)
    truth = {
        s["__key__"]: sorted(name.split(".")[0] for name in s if name.endswith(".jpg"))
        for s in wds.WebDataset(paths, shardshuffle=False)
    }
    assert len(truth) == 30
    return str(folder), truth


def torchrun(nproc: int, script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(REPO / "tests/training/data" / script), *args]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def keys_of(batches: list[dict]) -> list[str]:
    return [k for b in batches for k in b["keys"]]


def epoch_keys(runs: list[dict], kind: str, steps: int) -> list[str]:
    """The keys of one epoch over all ranks; each rank gave `steps` batches, all full."""
    for r in runs:
        assert len(r[kind]) == steps and all(len(b["keys"]) == BATCH for b in r[kind]), kind
    return [k for r in runs for k in keys_of(r[kind])]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_location_once_per_epoch_on_every_rank_and_worker_count(shards, tmp_path, world):
    folder, truth = shards
    torchrun(world, "epoch_probe.py", folder, str(tmp_path), "--batch-size", str(BATCH))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    assert [r["world"] for r in ranks] == [world] * world
    names = [f"{layout}/w{w}" for w in (0, 1, 2) for layout in ("pairs", "views")]
    assert all(sorted(r["train"]) == sorted(names) for r in ranks)
    for name in names:
        runs = [r["train"][name] for r in ranks]
        steps = 30 // (BATCH * world)
        assert {r["steps"] for r in runs} == {steps}, name  # equal steps on every rank
        assert {r["plan"]["remainder"] for r in runs} == {0}

        e0, e1, seed1 = (epoch_keys(runs, kind, steps) for kind in ("epoch0", "epoch1", "epoch0_seed1"))
        for keys in (e0, e1, seed1):
            assert len(keys) == len(set(keys)) == 30 and set(keys) == set(truth), name  # each exactly once
        assert e1 != e0 and seed1 != e0, name  # another epoch, another seed: another order
        for r in runs:
            # the same (seed, epoch) from a new loader: the same batches, payload included
            assert r["epoch0_again"] == r["epoch0"], name
            # resumed mid-epoch: exactly the batches from the resume step on
            assert r["resume_at"] >= 1 and r["epoch1_resumed"] == r["epoch1"][r["resume_at"] :], name
    for w in (0, 1, 2):  # the two layouts share the epoch plan: the same keys in the same order
        for r in ranks:
            pairs, views = r["train"][f"pairs/w{w}"], r["train"][f"views/w{w}"]
            assert keys_of(pairs["epoch0"]) == keys_of(views["epoch0"])
    # this process computes each rank's epoch alike: the order depends on (seed, epoch, rank, world) only
    cfg = LoaderConfig(
        folder,
        split="train",
        batch_size=BATCH,
        image_size=16,
        num_workers=0,
        shuffle_buffer=4,
        decode="defer",
    )
    for rank in range(world):
        loader = pretrain_loader(cfg, rank=rank, world_size=world)
        loader.set_epoch(1)
        seen = ranks[rank]["train"]["pairs/w0"]["epoch1"]
        assert [list(b["key"]) for b in loader] == [b["keys"] for b in seen]
    every_view = sorted(f"{k}/{v}" for k, views in truth.items() for v in views)
    for w in (0, 1, 2):
        for r in ranks:
            for name, want in ((f"first/w{w}", sorted(truth)), (f"views/w{w}", every_view)):
                first, second = r["eval"][name]
                assert sorted(keys_of(first)) == want, name  # every location (view) exactly once per pass
                assert second == first, name  # and the same pass every time
        assert ranks[0]["eval"][f"views/w{w}"] == ranks[-1]["eval"][f"views/w{w}"]  # on every rank alike


def pretrain_args(shards: str, out: Path) -> list[str]:
    """2 ranks x 2 locations per step over 30: 7 steps per epoch (2 locations dropped per epoch); 2 loader
    workers per rank; checkpoints every 4 steps and at epoch ends."""
    return [
        "--", "--data", shards, "--out", str(out), "--arch", "resnet18", "--method", "moco+geo+tp",
        "--image-size", "32", "--batch-size", "4", "--moco-k", "12", "--epochs", "2", "--num-workers", "2",
        "--shuffle-buffer", "4", "--n-clusters", "4", "--knn-every", "0", "--log-every", "1",
        "--ckpt-every", "4",
    ]  # fmt: skip


def paused_run(records: Path, pause_at: int, args: list[str]) -> tuple[subprocess.Popen, list[int]]:
    """A 2-rank geo-pretrain under torchrun, once both ranks are about to take batch `pause_at`; with
    the process groups of torchrun and of each rank (each rank is a session of its own)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests/training/data/trainer_probe.py"), str(records), "--pause-at", str(pause_at),
           *args]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    markers = [records / f"paused-rank{r}" for r in range(2)]
    deadline = time.monotonic() + 180
    try:
        while not all(m.exists() for m in markers):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, f"the ranks did not reach batch {pause_at}"
            time.sleep(0.05)
    except BaseException:
        signal_groups([proc.pid, *(int(m.read_text()) for m in markers if m.exists())], signal.SIGKILL)
        proc.communicate(timeout=60)
        raise
    return proc, [proc.pid, *(int(m.read_text()) for m in markers)]


def signal_groups(groups: list[int], sig: int) -> None:
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass


def finish(proc: subprocess.Popen, groups: list[int]) -> str:
    """Its stderr once it has ended (SIGKILL to every group after 120 s)."""
    try:
        return proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            signal_groups(groups, signal.SIGKILL)
            proc.communicate(timeout=60)


def read_records(folder: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (folder / f"rank{rank}.jsonl").read_text().splitlines()]


def test_geo_pretrain_stopped_and_killed_mid_epoch_resumes_on_the_same_batches(shards, tmp_path):
    """One run of 2 ranks x 2 loader workers, stopped twice in the middle of an epoch and resumed: SIGTERM
    to every process (as Slurm sends it), then SIGKILL to every process group; after each `--resume`
    the ranks train on the batches of an uninterrupted run, step for step."""
    folder, _ = shards
    run = tmp_path / "run"
    # 1. SIGTERM while the ranks are about to take batch 2: they agree to stop after that step (step 3)
    rec_a = tmp_path / "rec-a"
    proc, groups = paused_run(rec_a, 2, pretrain_args(folder, run))
    signal_groups(groups, signal.SIGTERM)
    (rec_a / "go").touch()
    err = finish(proc, groups)
    assert proc.returncode != 0 and err.count("stopped by signal 15 at step 3") == 1, err[-3000:]
    ckpt = torch.load(run / LAST, weights_only=True)
    assert (ckpt["step"], ckpt["epoch"], ckpt["epoch_step"], ckpt["world_size"]) == (3, 0, 3, 2)
    first = [read_records(rec_a, r) for r in range(2)]
    assert [[b["step"] for b in x] for x in first] == [[0, 1, 2]] * 2

    # 2. resumed (`--out RUN --resume` alone), killed with SIGKILL to every process group about to take
    # batch 10: steps 4..10 trained, the last checkpoint at step 8 (epoch 1, step 1 of 7)
    rec_b = tmp_path / "rec-b"
    proc, groups = paused_run(rec_b, 10, ["--", "--out", str(run), "--resume"])
    signal_groups(groups, signal.SIGKILL)
    err = finish(proc, groups)
    assert proc.returncode == -signal.SIGKILL
    assert "resumed" in err and "at step 3 (epoch 0)" in err, err[-3000:]
    ckpt = torch.load(run / LAST, weights_only=True)
    assert (ckpt["step"], ckpt["epoch"], ckpt["epoch_step"]) == (8, 1, 1)
    second = [read_records(rec_b, r) for r in range(2)]
    assert [[b["step"] for b in x] for x in second] == [list(range(3, 10))] * 2
    trained = {r["step"]: r for r in read_metrics(str(run), "train")}  # before --resume drops 9 and 10
    assert sorted(trained) == list(range(1, 11))

    # 3. resumed again, to step 10: steps 9 and 10 train again on the same batches, to the same losses
    rec_c = tmp_path / "rec-c"
    proc = torchrun(
        2, "trainer_probe.py", str(rec_c), "--", "--out", str(run), "--resume", "--max-steps", "10"
    )
    assert "at step 8 (epoch 1)" in proc.stderr, proc.stderr[-3000:]
    third = [read_records(rec_c, r) for r in range(2)]
    for rank in range(2):
        # keys and pixels of every batch after the resume, per rank and step, as before the kill
        assert third[rank] == second[rank][5:], rank
    again = read_metrics(str(run), "train")
    assert [r["step"] for r in again] == list(range(1, 11))
    for r in again[8:]:  # the same training, not only the same data
        for key in ("loss", "loss_moco", "loss_geo"):
            assert r[key] == pytest.approx(trained[r["step"]][key], rel=1e-5, abs=1e-6), (r["step"], key)

    # over the stop, the kill and the resumes, each rank took the batches of an uninterrupted run (the
    # loader for rank r of 2 with the run's settings, in this process): 28 of 30 locations in epoch 0, once
    cfg = LoaderConfig(folder, split="train", batch_size=2, image_size=32, num_workers=2, shuffle_buffer=4,
                       decode="defer")  # fmt: skip
    epoch0 = []
    for rank in range(2):
        loader = pretrain_loader(cfg, rank=rank, world_size=2)
        want = [list(b["key"]) for b in loader]  # epoch 0
        loader.set_epoch(1)
        want += [list(b["key"]) for b in loader]
        took = [b["keys"] for b in first[rank] + second[rank]]  # steps 0..9 (third: 8, 9 again)
        assert took == want[:10], rank
        epoch0 += [k for keys in took[:7] for k in keys]
    assert len(epoch0) == len(set(epoch0)) == 28
