"""The shipped GASSL presets: each loads, its values are the paper's, flags override it, `--preset list`.

The expected values are written out here from the GASSL sources (README command `-a resnet50 --lr 0.03
--batch-size 256 --epochs 200 --moco-dim 128 --mlp --aug-plus --cos --moco-t 0.02`, argparse defaults
K=65536, m=0.999, SGD momentum 0.9, wd 1e-4; Linear(128, 100) geo head with weight 1; the temporal
pipeline's crop; a CSV of images, i.e. an epoch of images), not read back from the preset files.
"""

from __future__ import annotations

import pytest

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.trainer.cli import build_parser, main
from geo_ssl.training.trainer.config import config_from_args, validate
from geo_ssl.training.trainer.presets import preset_names, read_preset

GASSL = {
    "arch": "resnet50",
    "dim": 128,
    "mlp": True,
    "moco_k": 65536,
    "moco_m": 0.999,
    "temperature": 0.02,
    "epochs": 200,
    "batch_size": 256,
    "lr": 0.03,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "schedule": "cosine",
    "warmup_steps": 0,
    "image_size": 224,
    "shuffle_bn": True,
    "epoch_unit": "image",
}
RUNS = {
    "gassl-fmow-moco": {"method": "moco", "crop": "moco"},
    "gassl-fmow-moco-tp": {"method": "moco+tp", "crop": "gassl"},
    "gassl-fmow-moco-geo": {"method": "moco+geo", "crop": "moco", "n_clusters": 100, "geo_weight": 1.0},
    "gassl-fmow-moco-geo-tp": {
        "method": "moco+geo+tp",
        "crop": "gassl",
        "n_clusters": 100,
        "geo_weight": 1.0,
    },
}


def _cfg(*argv: str):
    return config_from_args(build_parser().parse_args(list(argv)))


def test_the_four_paper_runs_are_shipped():
    assert set(RUNS) <= set(preset_names())


@pytest.mark.parametrize("name", sorted(RUNS))
def test_preset_values_are_the_papers(name):
    cfg = _cfg("--preset", name, "--data", "shards")
    want = {**GASSL, **RUNS[name]}
    got = {k: getattr(cfg, k) for k in want}
    assert got == want
    assert cfg.base_lr == pytest.approx(0.03)
    assert cfg.moco_weight == 1.0
    validate(cfg)  # a preset is a runnable config
    meta = read_preset(name)
    assert meta["description"] and "Table 1" in meta["paper"] and meta["uncertain"]


def test_flags_and_config_file_override_the_preset(tmp_path):
    cfg = _cfg("--preset", "gassl-fmow-moco-geo-tp", "--data", "d", "--temperature", "0.2", "--no-mlp")
    assert cfg.temperature == 0.2 and cfg.mlp is False and cfg.moco_k == 65536
    toml = tmp_path / "run.toml"
    toml.write_text('batch_size = 64\nepoch_unit = "location"\n')
    cfg = _cfg("--preset", "gassl-fmow-moco-tp", "--config", str(toml), "--data", "d", "--epochs", "3")
    assert (cfg.batch_size, cfg.epoch_unit, cfg.epochs, cfg.crop) == (64, "location", 3, "gassl")


def test_preset_list_and_unknown_name(capsys):
    main(["--preset", "list"])
    out = capsys.readouterr().out
    for name in RUNS:
        assert f"{name}: " in out
    assert "temperature=0.02" in out and "uncertain:" in out
    with pytest.raises(SystemExit) as exc:
        main(["--preset", "gassl-imagenet-nope", "--data", "d"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--preset gassl-imagenet-nope: unknown preset" in err[0]


def test_bad_crop_or_epoch_unit_in_a_config_file_is_refused(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('data = "d"\nepoch_unit = "views"\n')
    cfg = _cfg("--config", str(toml))
    with pytest.raises(GeoSSLError, match="epoch_unit = 'views'; choose one of location, image"):
        validate(cfg)
