"""fMoW `geo-build-dataset build` rerun with other settings (issue 17, item 3 follow-up): real subprocesses.

A rerun with another --k, --seed or shard option is refused before any stage writes (index and clusters
untouched), --rebuild replaces the build, and the worker count is not a setting. Old build folders whose
build.json holds only root and kind still resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from geo_ssl.pipeline.fmow.synth import synth_fmow
from tests.pipeline.test_hardening_cli import error_line, run_cli

FLAGS = ("--k", "2", "--seed", "0", "--resize", "32", "--shard-bytes", "100KB")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fmow")
    synth_fmow(str(root), locations=10, seed=2, workers=1)
    return root


@pytest.fixture(scope="module")
def built(root: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("build")
    proc = run_cli("build", "--root", str(root), "--out", str(out), *FLAGS, "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    return out


def _build(root: Path, out: Path, *extra: str):
    return run_cli("build", "--root", str(root), "--out", str(out), *FLAGS, "--workers", "1", *extra)


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "change, expect",
    [
        (("--k", "3"), ("k 2", "k 3")),
        (("--seed", "7"), ("seed 0", "seed 7")),
        (("--resize", "48"), ("shards.resize 32", "shards.resize 48")),
        (("--layout", "views"), ("shards.layout locations", "shards.layout views")),
    ],
    ids=["k", "seed", "resize", "layout"],
)
def test_rerun_with_other_settings_is_refused_before_any_stage_writes(change, expect, root, built, tmp_path):
    out = Path(shutil.copytree(built, tmp_path / "out"))
    before = _files(out)
    proc = _build(root, out, *change)
    assert proc.returncode == 2, proc.stdout
    line = error_line(proc)
    assert all(e in line for e in expect) and "--rebuild" in line, line
    assert proc.stdout == ""  # no stage ran
    assert _files(out) == before  # index/clusters.parquet not re-clustered, nothing else touched


def test_rebuild_replaces_a_build_of_other_settings_and_then_resumes(root, built, tmp_path):
    out = Path(shutil.copytree(built, tmp_path / "out"))
    proc = _build(root, out, "--k", "3", "--rebuild")
    assert proc.returncode == 0, proc.stderr
    assert "--rebuild" in proc.stdout and "k 2" in proc.stdout
    assert json.loads((out / "index" / "cluster_stats.json").read_text())["k"] == 3
    assert json.loads((out / "build.json").read_text())["k"] == 3
    assert run_cli("validate", str(out)).returncode == 0
    again = _build(root, out, "--k", "3")  # the same settings again: resumes
    assert again.returncode == 0, again.stderr
    assert "cluster: complete" in again.stdout


def test_another_worker_count_is_not_another_build(root, built, tmp_path):
    out = Path(shutil.copytree(built, tmp_path / "out"))
    manifest = (out / "manifest.parquet").read_bytes()
    proc = run_cli("build", "--root", str(root), "--out", str(out), *FLAGS, "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert "skipped" in proc.stdout
    assert (out / "manifest.parquet").read_bytes() == manifest


def test_an_old_build_json_of_root_and_kind_resumes_and_its_folder_still_guards_k(root, built, tmp_path):
    out = Path(shutil.copytree(built, tmp_path / "out"))
    (out / "build.json").write_text(json.dumps({"root": str(root), "kind": "rgb"}) + "\n")
    clusters = (out / "index" / "clusters.parquet").read_bytes()
    proc = _build(root, out, "--k", "3")  # the folder's cluster_stats.json says k 2
    assert proc.returncode == 2, proc.stdout
    assert "k 2" in error_line(proc) and "k 3" in error_line(proc)
    assert (out / "index" / "clusters.parquet").read_bytes() == clusters

    proc = _build(root, out)  # the settings it holds: resumes, and build.json now records them all
    assert proc.returncode == 0, proc.stderr
    assert "cluster: complete" in proc.stdout
    record = json.loads((out / "build.json").read_text())
    assert (record["k"], record["seed"], record["shards"]["resize"]) == (2, 0, 32)
    assert "workers" not in record["shards"]
