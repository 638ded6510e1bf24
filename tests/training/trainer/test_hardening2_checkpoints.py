"""geo-pretrain checkpoint history (issue 17 item 13): `--keep-checkpoints N` keeps the N newest periodic
checkpoints as checkpoint-step{STEP:08d}.pt (hard links in a local folder, copies in a bucket), `--save-steps`
keeps the asked-for ones for good; both may change on --resume; geo-export reads them."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from geo_ssl.training.evaluation import export
from geo_ssl.training.trainer import checkpoint, cli
from geo_ssl.training.trainer.checkpoint import LAST, NoSpaceError, keep_copy, step_name
from geo_ssl.training.trainer.config import config_from_dict
from geo_ssl.training.trainer.loop import config_toml, pretrain
from geo_ssl.training.trainer.run_log import read_metrics
from tests.s3_support import bucket_fs, plain_moto
from tests.shard_fixtures import make_tiny_shards
from tests.training.trainer.test_hardening2_trainer import tiny
from tests.training.trainer.test_run_in_bucket import restore_storage_env  # noqa: F401 (autouse fixture)

BUCKET = "geo-ssl-ckpts"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """16 locations: 2 steps per epoch of tiny()'s batch 8."""
    folder = tmp_path_factory.mktemp("shards")
    make_tiny_shards(folder, n_locations=16, n_shards=2, split="train", image_size=40, n_clusters=4)
    return str(folder)


def checkpoints(folder: Path) -> list[str]:
    return sorted(p for p in os.listdir(folder) if p.startswith("checkpoint") or p.startswith(".tmp-"))


def steps(*numbers: int) -> list[str]:
    return [step_name(n) for n in numbers]


def test_keep_checkpoints_keeps_the_newest_and_the_asked_for_ones(shards, tmp_path):
    out = tmp_path / "run"
    cfg = tiny(shards, out, n_clusters=4, ckpt_every=1, keep_checkpoints=2, save_steps="1", max_steps=5)
    assert pretrain(cfg)["steps"] == 5
    # was: checkpoint-last.pt only (no history to evaluate later)
    assert checkpoints(out) == sorted([LAST, *steps(1, 4, 5)])
    for n in (1, 4, 5):
        assert torch.load(out / step_name(n), weights_only=True)["step"] == n
    # the newest is the checkpoint just written, as a hard link: no second copy on the disk
    assert os.stat(out / step_name(5)).st_ino == os.stat(out / LAST).st_ino
    assert os.stat(out / step_name(4)).st_ino != os.stat(out / LAST).st_ino

    # --resume from checkpoint-last.pt with another N (not run-defining): the older ones pruned to it
    result = pretrain(tiny(shards, out, n_clusters=4, ckpt_every=1, keep_checkpoints=1, resume=True))
    assert result["steps"] == 6 and [r["step"] for r in read_metrics(str(out), "train")] == [1, 2, 3, 4, 5, 6]
    assert checkpoints(out) == sorted([LAST, *steps(1, 6)])  # step 1 still kept: --save-steps are for good
    assert 'save_steps = "1"' in (out / "config.toml").read_text()

    # geo-export takes a step checkpoint as it takes checkpoint-last.pt
    dst = tmp_path / "r18-step1.safetensors"
    export.main([str(out / step_name(1)), str(dst)])
    card = json.loads((tmp_path / "r18-step1.safetensors.json").read_text())
    assert card["from"] == str(out / step_name(1)) and card["step"] == 1


def test_save_steps_off_the_checkpoint_grid_and_keep_zero(shards, tmp_path):
    out = tmp_path / "run"
    cfg = tiny(shards, out, n_clusters=4, ckpt_every=2, keep_checkpoints=0, save_steps="3", max_steps=4)
    pretrain(cfg)
    assert checkpoints(out) == sorted([LAST, step_name(3)])  # step 3 is not on the --ckpt-every 2 grid
    assert torch.load(out / step_name(3), weights_only=True)["step"] == 3


def test_keep_checkpoints_and_save_steps_are_checked_on_one_line(tmp_path, capsys):
    for flags, message in [
        (["--keep-checkpoints", "-1"], "keep_checkpoints = -1 must be >= 0"),
        (["--save-steps", "100,x"], "save_steps = '100,x': give step numbers > 0, e.g. 1000,5000"),
        (["--save-steps", "-5"], "save_steps = '-5': give step numbers > 0"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["--data", str(tmp_path), "--out", str(tmp_path / "run"), *flags])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and "\n" not in err, err
        assert err.startswith("geo-pretrain: error: config: ") and message in err, err
    # a TOML list of steps is accepted; config.toml writes the value back in a form it reads again
    cfg = config_from_dict({"save_steps": [1000, 5000], "keep_checkpoints": 3})
    assert cfg.save_steps == "1000,5000"
    import tomllib

    assert tomllib.loads(config_toml(cfg))["save_steps"] == "1000,5000"


def test_a_copy_where_links_are_refused_is_checked_for_space(tmp_path, monkeypatch):
    src, dst = tmp_path / LAST, tmp_path / step_name(7)
    checkpoint.save_checkpoint(str(src), {"step": 7, "w": torch.zeros(1000)})

    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "links not supported")

    monkeypatch.setattr(os, "link", no_links)  # what some network and FUSE file systems answer
    keep_copy(str(src), str(dst))
    assert torch.load(dst, weights_only=True)["step"] == 7 and os.stat(dst).st_ino != os.stat(src).st_ino
    monkeypatch.setattr(checkpoint, "free_bytes", lambda folder: 1 << 20)  # less than the spare space
    with pytest.raises(NoSpaceError, match=r"no space left .*checkpoint-step00000008.pt was not kept"):
        keep_copy(str(src), str(tmp_path / step_name(8)))
    assert checkpoints(tmp_path) == sorted([LAST, step_name(7)])  # no temp left


def test_history_in_a_bucket(shards, tmp_path):
    with plain_moto(BUCKET, GEO_SSL_RUN_CACHE=str(tmp_path / "cache")) as endpoint:
        fs = bucket_fs(endpoint)
        fs.put(f"{shards}/", f"{BUCKET}/shards/", recursive=True)
        run = f"s3://{BUCKET}/run"
        flags = [
            "--data", f"s3://{BUCKET}/shards", "--out", run, "--arch", "resnet18", "--image-size", "32",
            "--batch-size", "8", "--moco-k", "16", "--epochs", "2", "--num-workers", "0",
            "--shuffle-buffer", "8", "--n-clusters", "4", "--knn-every", "0", "--log-every", "1",
            "--storage-endpoint", endpoint,
        ]  # fmt: skip
        cli.main(
            [*flags, "--ckpt-every", "1", "--keep-checkpoints", "1", "--save-steps", "1", "--max-steps", "3"]
        )

        def kept() -> list[str]:
            fs.invalidate_cache()
            return sorted(k.rsplit("/", 1)[1] for k in fs.ls(f"{BUCKET}/run") if "checkpoint" in k)

        assert kept() == sorted([LAST, *steps(1, 3)])
        cli.main(["--out", run, "--resume", "--storage-endpoint", endpoint])  # N and steps from config.toml
        assert kept() == sorted([LAST, *steps(1, 4)])
        ckpt = torch.load(fs.open(f"{BUCKET}/run/{step_name(4)}", "rb"), weights_only=True)
        assert ckpt["step"] == 4
