"""Methods as plug-ins: a method added from a test file alone trains with geo-pretrain; BYOL is one file
plus one registry line and trains, its loss and momentum schedule agree with lightly's."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.methods import get_method, method_names
from geo_ssl.training.methods.byol import BYOL, byol_loss, target_momentum
from geo_ssl.training.trainer.checkpoint import LAST, load_checkpoint
from geo_ssl.training.trainer.config import PretrainConfig, config_from_dict, resolved_bn_splits, validate
from tests.shard_fixtures import make_tiny_shards

REPO = Path(__file__).resolve().parents[3]
PKG_ROOTS = [REPO / "training", REPO / "pipeline", REPO / "schemas"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("shards")
    make_tiny_shards(folder, n_locations=16, n_shards=2, split="train", image_size=40, n_clusters=4)
    return str(folder)


def pretrain_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "geo_ssl.training.trainer.cli", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


TINY = ("--arch", "resnet18", "--image-size", "32", "--batch-size", "8", "--epochs", "2", "--num-workers", "0",
        "--shuffle-buffer", "8", "--knn-every", "0", "--log-every", "1", "--split", "train")  # fmt: skip


def test_a_method_added_from_a_test_file_trains_two_steps_with_geo_pretrain(shards, tmp_path):
    run = tmp_path / "toy"
    p = pretrain_cli("--plugins", "tests.training.methods.toy_method", "--method", "toy-match+tp", "--data", shards,
                     "--out", str(run), "--max-steps", "2", "--toy-weight", "0.5", "--dim", "16", *TINY)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    state = load_checkpoint(str(run / LAST))
    assert state["step"] == 2 and state["method"] == "toy-match+tp"
    assert (
        state["config"]["toy_weight"] == 0.5
        and state["config"]["plugins"] == "tests.training.methods.toy_method"
    )
    assert any(k.startswith("net.") for k in state["model"])
    # the run folder's config.toml names the plug-in: a plain --resume finds the method again, and a
    # changed option of the plug-in is a changed run
    p = pretrain_cli("--out", str(run), "--resume", "--max-steps", "3")
    assert p.returncode == 0, p.stderr[-2000:]
    assert load_checkpoint(str(run / LAST))["step"] == 3
    p = pretrain_cli(
        "--out", str(run), "--resume", "--toy-weight", "2.0", "--plugins", "tests.training.methods.toy_method"
    )
    assert p.returncode == 2 and "toy_weight: 0.5 -> 2.0" in p.stderr, p.stderr
    # geo-export finds the plug-in's encoder through its backbone prefix
    out = tmp_path / "toy.safetensors"
    p = subprocess.run([sys.executable, "-m", "geo_ssl.training.evaluation.export", str(run / LAST), str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]


def test_plugin_mistakes_are_one_line(shards, tmp_path):
    p = pretrain_cli("--plugins", "no_such_module_xyz", "--data", shards, "--out", str(tmp_path / "r"), *TINY)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no_such_module_xyz" in p.stderr
    p = pretrain_cli("--method", "toy-match", "--data", shards, "--out", str(tmp_path / "r"), *TINY)
    assert p.returncode == 2 and "unknown method 'toy-match'" in p.stderr and "--plugins" in p.stderr
    assert "Traceback" not in p.stderr
    p = pretrain_cli(
        "--method", "moco", "--byol-tau", "0.9", "--data", shards, "--out", str(tmp_path / "r"), *TINY
    )
    assert p.returncode == 2 and "byol_tau" in p.stderr and "byol" in p.stderr, p.stderr


@pytest.mark.parametrize("method", ["byol", "byol+tp"])
def test_byol_trains_on_the_shards(shards, tmp_path, method):
    run = tmp_path / method.replace("+", "_")
    p = pretrain_cli("--method", method, "--data", shards, "--out", str(run), "--max-steps", "2", "--dim", "16",
                     "--byol-hidden", "32", "--byol-tau", "0.9", *TINY)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    state = load_checkpoint(str(run / LAST))
    assert state["step"] == 2 and state["config"]["byol_tau"] == 0.9
    sd = state["model"]
    # the target is an EMA of the online encoder: after two steps it moved, but less than the online one
    online, target = sd["encoder.conv1.weight"], sd["target.conv1.weight"]
    assert not torch.equal(online, target)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(-1.0 <= m["loss_byol"] <= 1.0 for m in metrics if "loss_byol" in m)


def test_byol_loss_equals_lightlys_on_the_same_tensors():
    lightly_loss = pytest.importorskip(
        "lightly.loss", reason="lightly is a dev extra (pip install -e .[dev])"
    )
    g = torch.Generator().manual_seed(3)
    p1, p2, z1, z2 = (torch.randn(16, 32, generator=g) for _ in range(4))
    criterion = lightly_loss.NegativeCosineSimilarity()
    theirs = 0.5 * (criterion(p1, z2) + criterion(p2, z1))
    assert torch.allclose(byol_loss(p1, p2, z1, z2), theirs, atol=1e-6, rtol=0)


def test_byol_momentum_schedule_and_ema_equal_lightlys():
    utils = pytest.importorskip("lightly.models.utils", reason="lightly is a dev extra")
    from lightly.utils.scheduler import cosine_schedule

    # lightly's schedule ends at max_steps - 1; ours at total_steps: the same curve over total_steps + 1 points
    for step in (0, 1, 50, 99, 100):
        assert abs(target_momentum(0.99, step, 100) - cosine_schedule(step, 101, 0.99, 1.0)) < 1e-12
    torch.manual_seed(0)
    ours = BYOL("resnet18", dim=8, hidden=16)
    with torch.no_grad():
        for p in ours.encoder.parameters():
            p.add_(torch.randn_like(p))
    reference = BYOL("resnet18", dim=8, hidden=16)
    reference.load_state_dict(ours.state_dict())
    ours.update_target(0.9)
    utils.update_momentum(reference.encoder, reference.target, m=0.9)
    for (name, a), b in zip(ours.target.named_parameters(), reference.target.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_simclr_tp_gets_simclrs_checks_and_bn():
    for name in ("simclr", "simclr+tp"):
        cfg = PretrainConfig(data="x", method=name, batch_size=1, moco_k=16)
        with pytest.raises(GeoSSLError, match=re.escape(f"{name} needs batch_size >= 2")):
            validate(cfg)
        # no shuffle-BN sub-batches for SimCLR, +tp or not (it had up to 8 with +tp)
        assert resolved_bn_splits(PretrainConfig(data="x", method=name, batch_size=256), 1) == 1
    assert resolved_bn_splits(PretrainConfig(data="x", method="moco+tp", batch_size=256), 1) == 8


def test_every_family_gives_its_variants_and_prefix():
    assert {"moco", "moco+tp", "moco+geo", "moco+geo+tp", "simclr", "simclr+tp", "byol", "byol+tp"} <= set(
        method_names()
    )
    assert get_method("byol+tp").temporal and not get_method("byol+tp").geo
    assert get_method("moco+geo").backbone_prefix == "moco.encoder_q."
    assert "GASSL 'MoCo-V2+Geo+TP'" in get_method("moco+geo+tp").description


def test_run_defining_fields_come_from_metadata():
    cfg = config_from_dict({"data": "x", "method": "byol", "byol_tau": 0.5})
    from geo_ssl.training.trainer.config import RUN_DEFINING, run_defining

    assert "seed" in RUN_DEFINING and "num_workers" not in RUN_DEFINING and "max_steps" not in RUN_DEFINING
    assert run_defining(cfg.as_dict(), {})["byol_tau"] == 0.5


def _string_tests_on_method_names(path: Path) -> list[str]:
    """`x.method == "..."`, `"..." in x.method`, `x.method.startswith(...)` and the like, by AST."""

    def names_a_method(part: ast.AST) -> bool:
        return (isinstance(part, ast.Attribute) and part.attr in ("method", "family")) or (
            isinstance(part, ast.Name) and part.id in ("method", "family")
        )

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            text = any(isinstance(p, ast.Constant) and isinstance(p.value, str) for p in parts)
            hit = text and any(names_a_method(p) for p in parts)
        else:
            hit = (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("startswith", "endswith")
                and names_a_method(node.func.value)
            )
        if hit:
            found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_no_string_tests_on_method_names_outside_the_registry():
    files = [p for root in PKG_ROOTS for p in root.rglob("*.py") if "methods" not in p.parts]
    found = [hit for p in files for hit in _string_tests_on_method_names(p)]
    assert not found, f"method-name tests outside training/methods/: {found}"


def test_help_groups_the_options():
    p = pretrain_cli("--help")
    titles = [
        line for line in p.stdout.splitlines() if line and not line.startswith(" ") and line.endswith(":")
    ]
    for title in ("data:", "method and model", "optimiser", "run:", "method byol", "object storage"):
        assert any(t.startswith(title) for t in titles), titles
    assert (
        p.stdout.index("--crop-scale")
        < p.stdout.index("--method")
        < p.stdout.index("--lr")
        < p.stdout.index("--ckpt-every")
    )


def test_an_installed_package_registers_its_method_through_the_entry_point_group(tmp_path):
    dist = tmp_path / "toy_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[geo_ssl.methods]\ntoy = tests.training.methods.toy_method\n")
    code = "from geo_ssl.training.methods import get_method, load_plugins; load_plugins(); print(get_method('toy-match+tp').name)"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0 and p.stdout.strip() == "toy-match+tp", p.stderr[-2000:]
