"""GeoImageNet build and synth-imagenet under hostile use (issue 17, items 3, 19, 20): real subprocesses
against the Flickr stand-in over HTTP."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.geoimagenet.flickr_standin import FlickrStandin, load_photo_table
from geo_ssl.pipeline.geoimagenet.synth import synth_imagenet
from tests.pipeline.geoimagenet.conftest import KEY, SECRET
from tests.pipeline.test_hardening_cli import error_line, run_cli


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small synthetic ImageNet, a key file and a stand-in serving its photos (no faults)."""
    tmp = tmp_path_factory.mktemp("gin")
    world = synth_imagenet(str(tmp / "synth"), classes=3, per_class=10, seed=5)
    creds = tmp / "creds"
    creds.write_text(f"{KEY}\n{SECRET}\n")
    server = FlickrStandin(load_photo_table(world["photos"]), KEY, SECRET).start()
    yield {"tmp": tmp, "world": world, "creds": creds, "server": server}
    server.stop()


def _config(w: dict, out: Path, extra: str = "") -> Path:
    """A build config of the world into OUT; keys in `extra` replace the defaults."""
    keys = {"source": '"geoimagenet"', "root": f'"{w["world"]["root"]}"', "urls": f'"{w["world"]["urls"]}"',
            "out": f'"{out}"', "credentials": f'"{w["creds"]}"', "api_url": f'"{w["server"].url}"',
            "rate_limit": "720000", "k": "2"}  # fmt: skip
    for line in extra.splitlines():
        name, _, value = line.partition("=")
        keys[name.strip()] = value.strip()
    path = out.parent / f"{out.name}-{len(list(out.parent.glob('*.toml')))}.toml"
    body = "".join(f"{k} = {v}\n" for k, v in keys.items())
    path.write_text(body + '[shards]\nresize = 32\nworkers = 1\nshard_bytes = "100KB"\n')
    return path


def _calls(w: dict) -> int:
    return w["server"].state.stats()["requests"]


# --- item 3: a rerun with other settings is refused before any stage writes; --rebuild replaces ----------


def test_rerun_with_another_val_fraction_is_refused_up_front_and_rebuild_replaces(world, tmp_path):
    out = tmp_path / "out"
    first = run_cli("build", "--config", str(_config(world, out)))
    assert first.returncode == 0, first.stderr
    index = {p.name: p.read_bytes() for p in (out / "index").iterdir() if p.is_file()}
    manifest = (out / "manifest.parquet").read_bytes()

    calls = _calls(world)
    changed = _config(world, out, "val_fraction = 0.5")
    proc = run_cli("build", "--config", str(changed))
    assert proc.returncode == 2, proc.stdout
    line = error_line(proc)
    assert "val_fraction" in line and "0.2" in line and "0.5" in line and "--rebuild" in line, line
    assert proc.stdout == ""  # no stage ran
    assert _calls(world) == calls
    assert {p.name: p.read_bytes() for p in (out / "index").iterdir() if p.is_file()} == index
    assert (out / "manifest.parquet").read_bytes() == manifest

    proc = run_cli("build", "--config", str(changed), "--rebuild")
    assert proc.returncode == 0, proc.stderr
    assert "--rebuild" in proc.stdout and "val_fraction" in proc.stdout
    assert _calls(world) == calls  # the harvest (Flickr's answers) is kept
    splits = pq.read_table(out / "index" / "images.parquet", columns=["split"]).column("split").to_pylist()
    assert 0.3 < splits.count("val") / len(splits) < 0.7
    assert run_cli("validate", str(out)).returncode == 0
    again = run_cli("build", "--config", str(changed))  # the same settings again: resumes, skips
    assert again.returncode == 0, again.stderr
    assert "skipped" in again.stdout


def test_an_fmow_build_folder_is_not_taken_by_a_geoimagenet_build(world, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "build.json").write_text('{"root": "/data/fmow", "kind": "rgb"}\n')
    proc = run_cli("build", "--config", str(_config(world, out)))
    assert proc.returncode == 2
    assert "--rebuild" in error_line(proc)
    assert sorted(p.name for p in out.iterdir()) == ["build.json"]


# --- item 20: every config value checked before the harvest ------------------------------------------


@pytest.mark.parametrize(
    "toml, expect",
    [
        ("k = 'abc'", "k must be an integer, got 'abc'"),
        ("k = 4.7", "k must be an integer, got 4.7"),
        ("k = 0", "k must be at least 1, got 0"),
        ("rate_limit = 'fast'", "rate_limit must be a number, got 'fast'"),
        ("concurrency = 'many'", "concurrency must be an integer, got 'many'"),
        ("val_fraction = 'x'", "val_fraction must be a number, got 'x'"),
        ("val_fraction = 1.5", "val_fraction must be in [0, 1)"),
    ],
    ids=["string-k", "float-k", "zero-k", "string-rate", "string-concurrency", "string-val", "big-val"],
)
def test_geoimagenet_config_values_are_checked_before_the_harvest(toml, expect, world, tmp_path):
    out = tmp_path / "out"
    calls = _calls(world)
    config = _config(world, out, toml)
    proc = run_cli("build", "--config", str(config))
    assert proc.returncode == 2, proc.stdout
    line = error_line(proc)
    assert str(config) in line and expect in line, line
    assert not out.exists() and _calls(world) == calls


def test_every_geoimagenet_config_key_is_type_checked_in_process(world, tmp_path):
    from geo_ssl.pipeline.geoimagenet.build import load_config

    base = f'root = "{world["world"]["root"]}"\nurls = "{world["world"]["urls"]}"\n'
    path = tmp_path / "c.toml"
    for bad in ("k = true", "seed = -1", "seed = 1.5", "concurrency = 0", "rate_limit = 0", "rate_limit = true",
                "val_fraction = -0.1", "out = 3", "words = 1", 'api_url = "ftp://x"', "shards = 3",
                "[shards]\nresize = 5", '[shards]\nquality = "high"', "[shards]\nbogus = 1"):  # fmt: skip
        path.write_text(base + bad + "\n")
        with pytest.raises(GeoSSLError) as info:
            load_config(str(path), {})
        assert str(path) in str(info.value), (bad, str(info.value))
    path.write_text(
        base + "k = 7\nseed = 3\nval_fraction = 0\nrate_limit = 100\n[shards]\nsplits = ['train']\n"
    )
    cfg = load_config(str(path), {})
    assert (cfg.k, cfg.seed, cfg.val_fraction, cfg.harvest.rate_limit, cfg.shards.splits) == (
        7, 3, 0.0, 100.0, ("train",),
    )  # fmt: skip


# --- item 19: synth-imagenet counts and seed ------------------------------------------------------------


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--images-per-class", "0"], "--images-per-class: must be at least 1, got 0"),
        (["--images-per-class", "-5"], "--images-per-class: must be at least 1, got -5"),
        (["--seed", "-1"], "--seed: -1 out of range"),
    ],
    ids=["zero-images", "negative-images", "negative-seed"],
)
def test_synth_imagenet_bad_counts_and_seeds_are_one_line(args, expect, tmp_path):
    out = tmp_path / "synth"
    proc = run_cli("synth-imagenet", "--out", str(out), *args)
    assert proc.returncode == 2
    assert expect in error_line(proc)
    assert not out.exists()


def test_synth_imagenet_api_refuses_bad_counts(tmp_path):
    for kwargs in ({"per_class": 0}, {"per_class": -5}, {"seed": -1}, {"classes": 0}):
        with pytest.raises(GeoSSLError):
            synth_imagenet(str(tmp_path / "s"), **kwargs)
    assert not (tmp_path / "s").exists()
