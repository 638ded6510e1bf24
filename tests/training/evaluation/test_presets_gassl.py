"""The GASSL presets pin what GASSL ran (fp32; BatchNorm over 64 per sub-batch, as 4 GPUs x 64), and the
GeoImageNet runs are shipped with the paper's figures and split (issue 18, item 5)."""

from __future__ import annotations

import pytest

from geo_ssl.training.trainer.cli import build_parser, main
from geo_ssl.training.trainer.config import config_from_args, resolved_bn_splits, validate
from geo_ssl.training.trainer.presets import preset_names, read_preset

FMOW = ("gassl-fmow-moco", "gassl-fmow-moco-tp", "gassl-fmow-moco-geo", "gassl-fmow-moco-geo-tp")
GEOIMAGENET = {  # name: (method, the paper's Table 6 top-1)
    "gassl-geoimagenet-moco": ("moco", "38.51"),
    "gassl-geoimagenet-moco-geo": ("moco+geo", "39.96"),
}


def _cfg(*argv: str):
    return config_from_args(build_parser().parse_args(list(argv)))


@pytest.mark.parametrize("name", [*FMOW, *GEOIMAGENET])
def test_presets_run_fp32_with_bn_over_64(name):
    cfg = _cfg("--preset", name, "--data", "shards")
    assert cfg.amp == "off"  # GASSL had no autocast; geo-ssl's own default is bf16/fp16 on CUDA
    splits = resolved_bn_splits(cfg, world_size=1)
    assert (splits, cfg.batch_size // splits) == (4, 64)  # one process: 4 sub-batches of 64
    validate(cfg)
    validate(_cfg("--preset", name, "--data", "shards", "--bn-splits", "1"), world_size=4)  # 4 ranks x 64


@pytest.mark.parametrize("name", sorted(GEOIMAGENET))
def test_geoimagenet_presets_carry_the_papers_figures_and_split(name):
    method, top1 = GEOIMAGENET[name]
    assert name in preset_names()
    cfg = _cfg("--preset", name, "--data", "shards")
    got = (cfg.method, cfg.arch, cfg.epochs, cfg.batch_size, cfg.crop)
    assert got == (method, "resnet50", 200, 256, "moco")
    if "geo" in method:
        assert cfg.n_clusters == 100 and cfg.geo_weight == 1.0
    meta = read_preset(name)
    assert top1 in meta["paper"] and "Table 6" in meta["paper"]
    assert "443,435" in meta["description"] and "100,000" in meta["description"]
    assert any("temperature" in u for u in meta["uncertain"])


def test_preset_list_shows_the_geoimagenet_runs(capsys):
    main(["--preset", "list"])
    out = capsys.readouterr().out
    assert "gassl-geoimagenet-moco: " in out and "gassl-geoimagenet-moco-geo: " in out
    assert "amp=off" in out and "bn_splits=4" in out
