"""geo-build-dataset under hostile use (issue 7, items 7, 8, 9, 11, 13, 14, 16, 26): real subprocesses.

Each mistake ends with one line on stderr and exit 2 (argparse's usage line aside), before any stage
runs where the mistake is visible up front.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from geo_ssl.pipeline.fmow.synth import synth_fmow

CLI = [sys.executable, "-m", "geo_ssl.pipeline.cli"]
ENV = {**os.environ, "GEO_SSL_PROGRESS": "0"}


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=ENV, cwd=cwd)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The last stderr line, after checking there is no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fmow")
    synth_fmow(str(root), locations=10, seed=2, workers=1)
    return root


@pytest.fixture(scope="module")
def built(root: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("build")
    proc = run_cli("build", "--root", str(root), "--out", str(out), "--k", "2", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    return out


# --- item 7: one writer per output folder -----------------------------------------------------------


def start_lock_holder(out: Path) -> subprocess.Popen:
    """A process that holds OUT's output lock for a minute; returns once it holds it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from geo_ssl.pipeline.common.outlock import output_lock\n"
         "with output_lock(sys.argv[1], 'write-shards'):\n"
         "    print('locked', flush=True); time.sleep(60)\n", str(out)],
        stdout=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_writer_is_refused_and_a_killed_writers_lock_is_taken_over(built: Path, tmp_path: Path):
    out = tmp_path / "shards"
    holder = start_lock_holder(out)
    try:
        (out / ".tmp-x-train-000000.tar").write_bytes(b"the first run's temp file")
        proc = run_cli("write-shards", "--index", str(built / "index"), "--out", str(out), "--workers", "1")
        assert proc.returncode == 2
        line = error_line(proc)
        assert f"another run is writing here (pid {holder.pid}" in line and "since" in line
        assert (out / ".tmp-x-train-000000.tar").exists()  # the refused run touched nothing
        assert not list(out.glob("train-*.tar"))
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: the lock file stays, naming a dead pid
        holder.wait()
    assert json.loads((out / ".geo-ssl.lock").read_text())["pid"] == holder.pid
    proc = run_cli("write-shards", "--index", str(built / "index"), "--out", str(out), "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert not (out / ".geo-ssl.lock").exists()  # released at the end
    assert (out / "manifest.parquet").exists()


# --- item 8: a build folder of another root ---------------------------------------------------------


def test_build_into_a_folder_holding_another_roots_build_is_refused_or_rebuilt(root, built, tmp_path):
    other = Path(shutil.copytree(root, tmp_path / "other"))
    shutil.rmtree(next(p for p in sorted((other / "train").iterdir()) if p.is_dir()))
    out = Path(shutil.copytree(built, tmp_path / "out"))
    before = (out / "manifest.parquet").read_bytes()

    proc = run_cli("build", "--root", str(other), "--out", str(out), "--k", "2", "--workers", "1")
    assert proc.returncode == 2
    line = error_line(proc)
    assert f"holds a build of root {root}" in line and "--rebuild" in line
    assert (out / "manifest.parquet").read_bytes() == before

    proc = run_cli(
        "build", "--root", str(other), "--out", str(out), "--k", "2", "--workers", "1", "--rebuild"
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "index" / "index_summary.json").read_text())
    assert summary["root"] == str(other) and summary["skipped"] == 0
    assert run_cli("validate", str(out)).returncode == 0


# --- item 9: non-UTF-8 file names ---------------------------------------------------------------------


def test_non_utf8_names_are_bad_path_rejects_and_the_run_goes_on(root: Path, tmp_path: Path):
    tree = Path(shutil.copytree(root, tmp_path / "fmow"))
    location = next(p for p in sorted((tree / "train").glob("*/*")) if list(p.glob("*_1_rgb.jpg")))
    category = location.parent
    bad_folder = os.path.join(os.fsencode(category), os.fsencode(category.name) + b"_9\xff")
    os.makedirs(bad_folder)
    for src in sorted(location.glob("*_0_rgb.*")):
        shutil.copy(src, os.path.join(bad_folder, os.fsencode(src.name)))
    view = sorted(location.glob("*_1_rgb.jpg"))[0]
    bad_file = os.path.join(os.fsencode(location), os.fsencode(view.name).replace(b"_1_", b"_1\xfe_"))
    shutil.copy(view, bad_file)
    shutil.copy(view.with_suffix(".json"), bad_file[:-4] + b".json")

    out = tmp_path / "index"
    proc = run_cli("index-fmow", "--root", str(tree), "--out", str(out), "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert "[ok]" in proc.stdout and "bad_path=2" in proc.stdout
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    bad = sorted(r["path"] for r in rejects if r["reason"] == "bad_path")
    assert len(bad) == 2 and any("\\xff" in p for p in bad) and any("\\xfe" in p for p in bad)
    clean = pq.read_table(out / "images.parquet").num_rows
    assert clean == json.loads((out / "index_summary.json").read_text())["written"] > 0


# --- item 11: output paths that cannot be used ----------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["index-fmow", "--root", "{root}", "--out", "{file}"],
        ["cluster", "--index", "{index}", "--k", "2", "--out", "{file}"],
        ["write-shards", "--index", "{index}", "--out", "{file}"],
        ["build", "--root", "{root}", "--out", "{file}"],
        ["report", "{built}", "--plots", "{file}"],
        ["index-fmow", "--root", "{root}", "--out", "{file}/below"],
        ["write-shards", "--index", "{index}", "--out", "{unwritable}"],
    ],
    ids=["index-fmow", "cluster", "write-shards", "build", "report", "below-a-file", "unwritable"],
)
def test_unusable_output_paths_are_one_line(args, root, built, tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("not a folder")
    if os.geteuid() == 0:  # root writes through permissions: use a filesystem that refuses everyone
        unwritable = "/proc/geo-ssl-out"
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        unwritable = str(tmp_path / "ro" / "out")
    values = {
        "root": root,
        "file": a_file,
        "index": built / "index",
        "built": built,
        "unwritable": unwritable,
    }
    argv = [a.format(**values) for a in args]
    proc = run_cli(*argv)
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc)
    assert len(proc.stderr.strip().splitlines()) == 1
    flag = "--plots" if args[0] == "report" else "--out"
    assert line.startswith(f"geo-build-dataset: error: {flag} "), line
    assert a_file.read_text() == "not a folder"


def test_a_folder_where_an_output_file_goes_is_one_line(root: Path, tmp_path: Path):
    out = tmp_path / "index"
    (out / "images.parquet" / "x").mkdir(parents=True)
    proc = run_cli("index-fmow", "--root", str(root), "--out", str(out), "--workers", "1")
    assert proc.returncode == 2
    assert error_line(proc) == f"geo-build-dataset: error: {out}/images.parquet: Is a directory"
    assert not list(out.glob(".tmp-*"))


# --- items 13, 14, 16: flags and config values checked up front -----------------------------------------


@pytest.mark.parametrize(
    "args, expect",
    [
        (["cluster", "--index", "{index}", "--k", "2", "--seed", "-1"], "--seed: -1 out of range"),
        (["write-shards", "--index", "{index}", "--out", "{out}", "--seed", "4294967296"], "out of range"),
        (["build", "--root", "{root}", "--out", "{out}", "--seed", "4294967296"], "out of range"),
        (["write-shards", "--index", "{index}", "--out", "{out}", "--splits", ","], "names no split"),
    ],
    ids=["cluster-seed", "write-shards-seed", "build-seed", "empty-splits"],
)
def test_bad_seeds_and_splits_are_refused_before_any_work(args, expect, root, built, tmp_path):
    out = tmp_path / "out"
    argv = [a.format(index=built / "index", out=out, root=root) for a in args]
    proc = run_cli(*argv)
    assert proc.returncode == 2
    assert expect in error_line(proc)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    "toml, expect",
    [
        ("k = 4.7", "k must be an integer, got 4.7"),
        ('[shards]\nsplits = "train"', "shards.splits must be a list, got 'train'"),
        ("seed = -1", "seed -1 out of range"),
        ('[shards]\nresize = "448"', "shards.resize must be an integer"),
    ],
    ids=["float-k", "string-splits", "negative-seed", "string-resize"],
)
def test_build_config_values_are_checked_before_any_stage(toml, expect, root, tmp_path):
    out = tmp_path / "out"
    config = tmp_path / "build.toml"
    config.write_text(f'root = "{root}"\nout = "{out}"\n{toml}\n')
    proc = run_cli("build", "--config", str(config))
    assert proc.returncode == 2
    line = error_line(proc)
    assert str(config) in line and expect in line
    assert not out.exists()  # nothing ran


def test_every_config_key_is_type_checked_in_process(root):
    from geo_ssl.pipeline.build import load_build_config
    from geo_ssl.pipeline.common.errors import GeoSSLError

    for bad in ('k = true', 'k = 0', 'kind = "ir"', "index_workers = 0", "shards = 3", "[shards]\nbogus = 1",
                "[shards]\nquality = 9.5", '[shards]\nupscale = "yes"', "[shards]\nsplits = []",
                "[shards]\nsplits = [1]", "[shards]\nresize = 5", 'out = 3'):  # fmt: skip
        path = Path(root).parent / "c.toml"
        path.write_text(f'root = "{root}"\n{bad}\n')
        with pytest.raises(GeoSSLError):
            load_build_config(str(path))
    path.write_text(f'root = "{root}"\nk = 7\nseed = 3\n[shards]\nsplits = ["train"]\ncontext = 0.5\n')
    config = load_build_config(str(path))
    assert (config.k, config.seed, config.shards.splits, config.shards.context) == (7, 3, ("train",), 0.5)


# --- item 26: locations at one point ------------------------------------------------------------------


def test_locations_at_one_point_count_once_and_the_suggested_k_leaves_no_cluster_empty(tmp_path):
    import datetime as dt

    import numpy as np
    import pyarrow as pa
    import shapely

    from geo_ssl.pipeline.cluster import cluster
    from geo_ssl.pipeline.common.errors import GeoSSLError
    from geo_ssl.pipeline.common.tables import write_table
    from geo_ssl.schemas import LOCATIONS

    noise = np.arange(12) * 1e-12  # one site, with the float noise of separate footprints
    lat, lon = 41.0 + noise, 29.0 - noise
    lat[8:], lon[8:] = 40.0 + noise[8:], 30.0  # and a second site
    when = dt.datetime(2016, 1, 1, tzinfo=dt.UTC)
    rows = [
        {"location_key": f"train-dam_{i}", "split": "train", "category": "dam", "category_index": 17,
         "location_id": f"dam_{i}", "lat": float(lat[i]), "lon": float(lon[i]), "n_views": 1,
         "first_timestamp": when, "last_timestamp": when,
         "geometry": shapely.to_wkb(shapely.Point(float(lon[i]), float(lat[i])))}
        for i in range(12)
    ]  # fmt: skip
    index = tmp_path / "index"
    index.mkdir()
    write_table(pa.Table.from_pylist(rows, LOCATIONS), str(index / "locations.parquet"), "locations")

    with pytest.raises(GeoSSLError) as err:
        cluster(str(index), k=3)
    assert "2 distinct train locations" in str(err.value) and "--k 2" in str(err.value)
    stats = cluster(str(index), k=2)
    assert stats["empty_clusters"] == 0 and stats["train_cluster_size"]["min"] == 4
