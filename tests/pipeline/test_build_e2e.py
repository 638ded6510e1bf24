"""End to end through the real CLI: synth-fmow -> build -> validate -> report, read back without geo-ssl."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from geo_ssl.pipeline.fmow.synth import synth_fmow

CLI = [sys.executable, "-m", "geo_ssl.pipeline.cli"]


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env={**os.environ, "GEO_SSL_PROGRESS": "0"}
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fmow")
    synth_fmow(str(root), locations=40, seed=3, workers=2)
    return root


@pytest.fixture(scope="module")
def built(synth_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("build")
    run_cli(
        "build", "--root", str(synth_root), "--out", str(out), "--k", "4", "--seed", "1", "--workers", "2"
    )
    return out


def test_build_outputs_read_back_with_plain_webdataset(built: Path) -> None:
    manifest = pq.read_table(built / "manifest.parquet").to_pylist()
    assert manifest, "no shards written"
    locations = pq.read_table(built / "index" / "locations.parquet").to_pylist()
    clusters = {
        r["location_key"]: r["cluster"]
        for r in pq.read_table(built / "index" / "clusters.parquet").to_pylist()
    }
    seen = {}
    for row in manifest:
        ds = wds.WebDataset(str(built / row["shard"]), shardshuffle=False).decode("pil")
        n = 0
        for sample in ds:
            meta = sample["json"]
            views = sorted(k for k in sample if k.endswith(".jpg"))
            assert len(views) == meta["n_views"] >= 1
            stamps = [v["timestamp"] for v in meta["views"]]
            assert stamps == sorted(stamps), "views must be sorted by time"
            assert int(sample["cls"]) == meta["cluster"] == clusters[sample["__key__"]]
            assert sample[views[0]].size == tuple(meta["views"][0]["size"])
            seen[sample["__key__"]] = meta
            n += 1
        assert n == row["samples"]
        listing = subprocess.run(
            ["tar", "-tf", str(built / row["shard"])], capture_output=True, text=True, check=True
        )
        assert all("." in name and name.split(".")[0].count("/") == 0 for name in listing.stdout.split())
    assert set(seen) == {r["location_key"] for r in locations}


def test_counts_reconcile_and_card(built: Path) -> None:
    card = json.loads((built / "dataset.json").read_text())
    index_summary = json.loads((built / "index" / "index_summary.json").read_text())
    assert (
        index_summary["inputs"]
        == index_summary["written"] + index_summary["rejected"] + index_summary["skipped"]
    )
    assert "schema_version" in json.dumps(card)


def test_validate_and_report(built: Path) -> None:
    proc = run_cli("validate", str(built))
    assert "ok" in proc.stdout.lower()
    proc = run_cli("report", str(built))
    pngs = [Path(p) for p in proc.stdout.split()]
    assert len(pngs) == 5 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)  # + contact sheet
    assert pngs[-1].name == "contact_sheet.png"


def test_rerun_skips_finished_stages(built: Path, synth_root: Path) -> None:
    before = (built / "manifest.parquet").read_bytes()
    proc = run_cli("build", "--root", str(synth_root), "--out", str(built), "--k", "4", "--seed", "1")
    assert "skipped" in proc.stdout
    assert (built / "manifest.parquet").read_bytes() == before


def test_two_builds_byte_identical(built: Path, synth_root: Path, tmp_path: Path) -> None:
    config = tmp_path / "build.toml"
    config.write_text(f'root = "{synth_root}"\nk = 4\nseed = 1\n[shards]\nworkers = 1\n')
    run_cli("build", "--config", str(config), "--out", str(tmp_path / "again"))

    def digests(folder: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}

    assert digests(built) == digests(tmp_path / "again")


def _corrupt_tree(src: Path, dst: Path) -> dict[str, str]:
    """Copy the synthetic tree and break five views in five different ways; return path -> reason."""
    shutil.copytree(src, dst)
    jsons = sorted(dst.glob("train/*/*/*_rgb.json"))
    broken = {}
    # truncated JPEG
    jpg = jsons[0].with_suffix(".jpg")
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    broken[str(jsons[0])] = "truncated_image"
    # empty JSON
    jsons[1].write_text("")
    broken[str(jsons[1])] = "bad_json"
    # NaN polygon
    meta = json.loads(jsons[2].read_text())
    meta["raw_location"] = "POLYGON ((nan nan, nan nan, nan nan, nan nan, nan nan))"
    jsons[2].write_text(json.dumps(meta))
    broken[str(jsons[2])] = "bad_polygon|bad_coordinates"
    # missing image
    jsons[3].with_suffix(".jpg").unlink()
    broken[str(jsons[3])] = "missing_image"
    # box outside the image
    meta = json.loads(jsons[4].read_text())
    boxes = meta["bounding_boxes"]
    entries = boxes if isinstance(boxes, list) else [boxes]
    for entry in entries:
        if entry.get("ID", 0) != -1:
            entry["box"] = [meta["img_width"] + 5, 0, 10, 10]
    jsons[4].write_text(json.dumps(meta))
    broken[str(jsons[4])] = "bad_box"
    return broken


def test_corrupt_inputs_end_in_rejects(synth_root: Path, tmp_path: Path) -> None:
    broken = _corrupt_tree(synth_root, tmp_path / "fmow")
    out = tmp_path / "build"
    run_cli("build", "--root", str(tmp_path / "fmow"), "--out", str(out), "--k", "4")
    rejects = pq.read_table(out / "index" / "rejects.parquet").to_pylist()
    by_stem = {Path(r["path"]).name.rsplit(".", 1)[0]: r for r in rejects}
    for path, reasons in broken.items():
        stem = Path(path).name.rsplit(".", 1)[0]
        assert stem in by_stem, f"{path} not rejected"
        assert by_stem[stem]["reason"] in reasons.split("|"), by_stem[stem]
        assert by_stem[stem]["detail"]
    summary = json.loads((out / "index" / "index_summary.json").read_text())
    assert summary["rejected"] >= len(broken)
    assert summary["inputs"] == summary["written"] + summary["rejected"] + summary["skipped"]
    images = pq.read_table(out / "index" / "images.parquet")
    assert images.num_rows == summary["written"]
    assert not any(math.isnan(x) for x in images.column("lat").to_pylist())
    run_cli("validate", str(out))


def test_user_mistake_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("build", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "nope" in proc.stderr
