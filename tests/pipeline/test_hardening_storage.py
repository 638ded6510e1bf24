"""Storage failures are not data errors (issue 7, items 3, 7 on object storage, and 12).

A real S3 endpoint (moto's server) behind a fault-injecting proxy on loopback (tests/s3_support.py)
that answers GETs of chosen keys with 503. index-fmow and write-shards run as real subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from geo_ssl.pipeline.fmow.synth import synth_fmow
from tests.s3_support import S3Endpoint, free_port, s3_with_faults

CLI = [sys.executable, "-m", "geo_ssl.pipeline.cli"]
BUCKET = "geo-ssl-test"
ROOT = f"s3://{BUCKET}/fmow"
SHARD_FLAGS = ["--workers", "1", "--shard-bytes", "40KB", "--resize", "64"]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def files(folder: Path) -> dict[str, bytes]:
    """Every output file; the card without its input locations (recorded relative to the folder)."""
    out = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    card = json.loads(out.pop("dataset.json"))
    card.pop("inputs")
    out["dataset.json"] = json.dumps(card, sort_keys=True).encode()
    return out


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> S3Endpoint:
    local = tmp_path_factory.mktemp("fmow")
    synth_fmow(str(local), locations=8, seed=5, workers=1)
    for path in local.rglob("*.*"):  # small upload: rgb files of views 0 to 2 only
        parts = path.stem.rsplit("_", 2)
        if path.is_file() and (not path.stem.endswith("_rgb") or int(parts[-2]) > 2):
            path.unlink()
    with s3_with_faults(BUCKET) as endpoint:
        import s3fs

        s3fs.S3FileSystem().put(f"{local}/", f"{BUCKET}/fmow/", recursive=True)
        yield endpoint


@pytest.fixture(scope="module")
def clean(s3: S3Endpoint, tmp_path_factory) -> dict[str, Path]:
    """An index and shards made with no fault (in this process, which saves three start-ups): what every
    faulty run must end up equal to."""
    from geo_ssl.pipeline.cluster import cluster
    from geo_ssl.pipeline.fmow.index import index_fmow
    from geo_ssl.pipeline.shards.options import ShardOptions
    from geo_ssl.pipeline.shards.write import write_shards

    base = tmp_path_factory.mktemp("clean")
    index, shards = base / "index", base / "shards"
    index_fmow(ROOT, str(index), workers=1)
    cluster(str(index), k=2)
    write_shards(str(index), str(shards), options=ShardOptions(workers=1, shard_bytes="40KB", resize=64))
    return {"index": index, "shards": shards}


def _a_view(index: Path, split: str = "train") -> tuple[str, str]:
    """(image key, category) of one view of the index, as a path fragment the proxy matches."""
    row = next(r for r in pq.read_table(index / "images.parquet").to_pylist() if r["split"] == split)
    return row["image_path"].split(f"{BUCKET}/", 1)[1], row["category"]


def test_index_part_fails_on_a_storage_outage_and_the_rerun_completes_it(s3, clean, tmp_path):
    key, category = _a_view(clean["index"])
    json_key = key.replace("_rgb.jpg", "_rgb.json")
    out = tmp_path / "index"
    s3.faults.fail(json_key)  # 503 on every GET of one JSON, through every retry
    try:
        proc = run_cli("index-fmow", "--root", ROOT, "--out", str(out), "--workers", "1")
    finally:
        s3.faults.clear()
    assert proc.returncode == 3, proc.stderr
    line = one_line(proc)
    assert f"train/{category}" in line and json_key in line and "rerun" in line
    assert s3.faults.failed[json_key] == 3  # GEO_SSL_IO_ATTEMPTS=3
    assert not (out / "images.parquet").exists()
    parts = out / "_parts" / "rgb" / "train"
    assert not (parts / f"{category}.images.parquet").exists()  # the part is not marked done
    assert len(list(parts.glob("*.images.parquet"))) >= 1  # the other parts are

    proc = run_cli("index-fmow", "--root", ROOT, "--out", str(out), "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert "0 rejected" in proc.stdout  # the outage never became a bad_json reject
    for name in ("images.parquet", "locations.parquet", "rejects.parquet"):
        assert (out / name).read_bytes() == (clean["index"] / name).read_bytes(), name


def test_a_few_503s_are_retried_and_change_nothing(s3, clean, tmp_path):
    key, _ = _a_view(clean["index"])
    out = tmp_path / "shards"
    s3.faults.fail(key, times=2)  # fewer than GEO_SSL_IO_ATTEMPTS
    try:
        proc = run_cli("write-shards", "--index", str(clean["index"]), "--out", str(out), *SHARD_FLAGS)
    finally:
        s3.faults.clear()
    assert proc.returncode == 0, proc.stderr
    assert s3.faults.failed[key] == 2
    assert files(out) == files(clean["shards"])


def test_write_shards_fails_the_shard_not_the_view_and_the_rerun_writes_it(s3, clean, tmp_path):
    key, _ = _a_view(clean["index"], split="val")
    out = tmp_path / "shards"
    s3.faults.fail(key)
    try:
        proc = run_cli("write-shards", "--index", str(clean["index"]), "--out", str(out), *SHARD_FLAGS)
    finally:
        s3.faults.clear()
    assert proc.returncode == 3, proc.stderr
    line = one_line(proc)
    assert "val-000000.tar" in line and key in line and "rerun the same command" in line
    assert not (out / "_done" / "val-000000.json").exists() and not (out / "val-000000.tar").exists()
    assert (out / "_done" / "train-000000.json").exists()  # the other shards are done
    assert not (out / "manifest.parquet").exists() and not (out / "rejects.parquet").exists()

    proc = run_cli("write-shards", "--index", str(clean["index"]), "--out", str(out), *SHARD_FLAGS)
    assert proc.returncode == 0, proc.stderr
    assert "0 rejected" in proc.stdout
    assert files(out) == files(clean["shards"])


def test_a_lock_object_on_s3_stops_a_second_writer(s3, clean):
    from geo_ssl.pipeline.common.outlock import LOCK_NAME, output_lock

    out = f"s3://{BUCKET}/locked-shards"
    with output_lock(out, "write-shards"):
        proc = run_cli("write-shards", "--index", str(clean["index"]), "--out", out, *SHARD_FLAGS)
        import s3fs

        assert s3fs.S3FileSystem().exists(f"{BUCKET}/locked-shards/{LOCK_NAME}")
    assert proc.returncode == 2
    assert f"another run is writing here (pid {os.getpid()}" in one_line(proc)


def _endpoint(url: str) -> str:
    return json.dumps({"client_kwargs": {"endpoint_url": url}})


def test_storage_down_is_one_line_with_exit_3(tmp_path):
    env = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1", "GEO_SSL_IO_ATTEMPTS": "1", "GEO_SSL_PROGRESS": "0",
        "FSSPEC_S3": _endpoint(f"http://127.0.0.1:{free_port()}"),
    }  # fmt: skip
    proc = run_cli("index-fmow", "--root", "s3://nowhere/fmow", "--out", str(tmp_path / "i"), env=env)
    assert proc.returncode == 3
    line = one_line(proc)
    assert "storage unreachable" in line and "rerun" in line and "EndpointConnectionError" in line


def test_missing_credentials_are_one_line_with_exit_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION="us-east-1", GEO_SSL_PROGRESS="0",
        FSSPEC_S3=_endpoint(f"http://127.0.0.1:{free_port()}"),
    )  # fmt: skip
    proc = subprocess.run(
        [*CLI, "index-fmow", "--root", "s3://nowhere/fmow", "--out", str(tmp_path / "i")],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "no usable credentials" in one_line(proc)


def test_an_index_table_that_cannot_be_read_is_a_storage_error_not_a_bad_parquet_file(s3, clean):
    import s3fs

    from geo_ssl.pipeline.common.retry import StorageError
    from geo_ssl.pipeline.common.tables import read_table

    s3fs.S3FileSystem().put_file(str(clean["index"] / "images.parquet"), f"{BUCKET}/idx/images.parquet")
    s3.faults.fail("idx/images.parquet", times=2)  # retried through
    assert read_table(f"s3://{BUCKET}/idx/images.parquet", "image_index").num_rows > 0
    s3.faults.fail("idx/images.parquet")
    try:
        with pytest.raises(StorageError) as err:
            read_table(f"s3://{BUCKET}/idx/images.parquet", "image_index")
    finally:
        s3.faults.clear()
    assert err.value.exit_code == 3 and "not a readable Parquet" not in str(err.value)
