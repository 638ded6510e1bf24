"""geo-eval against object storage that does not answer or has no credentials, and a split scored against
itself (issue 17 items 9 and 28). Real subprocesses of the command; a port nothing listens on, and moto's
real S3 server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geo_ssl.training.evaluation import cli as eval_cli
from tests.s3_support import TEST_CREDENTIALS, free_port, moto_server
from tests.shard_fixtures import make_tiny_shards

REPO = Path(__file__).resolve().parents[3]
BUCKET = "geo-ssl-eval-h2"
_STORAGE_ENV = ("AWS_", "FSSPEC_", "GEO_SSL_STORAGE_")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("shards")
    make_tiny_shards(folder, n_locations=8, n_shards=1, split="train", image_size=32, n_clusters=3)
    make_tiny_shards(folder, n_locations=4, n_shards=1, split="val", image_size=32, n_clusters=3, seed=1)
    return str(folder)


def run_cli(module: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`python -m module args` with no storage settings or credentials from this machine, plus `env`;
    one botocore attempt and quick backoff (the retries are ours)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(_STORAGE_ENV)}
    base.update(
        GEO_SSL_PROGRESS="0", GEO_SSL_IO_ATTEMPTS="2", GEO_SSL_IO_BACKOFF="0.05", AWS_MAX_ATTEMPTS="1",
        AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/nonexistent/aws-config",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent/aws-credentials",
    )  # fmt: skip
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=REPO, env={**base, **env}, capture_output=True, text=True, timeout=120)


def geo_eval(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return run_cli("geo_ssl.training.evaluation.cli", env, *args)


def _cases(shards: str) -> list[tuple[list[str], str]]:
    """--weights, --data and --out in the bucket, each with the other two local."""
    small = ["--image-size", "32", "--batch-size", "8", "--num-workers", "0", "--k", "3"]
    rand = ["--weights", "random", "--arch", "resnet18"]
    return [
        (["knn", "--weights", f"s3://{BUCKET}/w.safetensors", "--data", shards, *small], "w.safetensors"),
        (["knn", *rand, "--data", f"s3://{BUCKET}/shards", *small], f"s3://{BUCKET}/shards"),
        (["knn", *rand, "--data", shards, "--out", f"s3://{BUCKET}/knn.json", *small], "--out s3://"),
    ]


def _one_line(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.strip()
    assert err.startswith("geo-eval: error: ") and "\n" not in err, err[-3000:]
    assert "top-1" not in proc.stdout
    return err


def test_storage_down_is_one_line_and_exit_3(shards):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for args, needle in _cases(shards):
        proc = geo_eval(TEST_CREDENTIALS, *args, "--storage-endpoint", dead)
        err = _one_line(proc)  # was: 65 to 140 lines of botocore traceback, exit 1
        assert proc.returncode == 3, (args, err)
        assert needle in err and "EndpointConnectionError" in err and "rerun" in err, err


def test_no_credentials_is_one_line_and_exit_2(shards):
    with moto_server(BUCKET) as endpoint:
        for args, needle in _cases(shards):
            proc = geo_eval({}, *args, "--storage-endpoint", endpoint)
            err = _one_line(proc)
            assert proc.returncode == 2, (args, err)
            assert needle in err and "NoCredentialsError" in err and "AWS_ACCESS_KEY_ID" in err, err


def test_a_split_scored_against_itself_is_refused(shards):
    rand = ["--weights", "random", "--arch", "resnet18", "--data", shards]
    for args, needle in (
        (["knn", *rand, "--bank-split", "train", "--query-split", "train"], "--query-split train"),
        (["knn", *rand, "--bank-split", "val"], "--query-split val"),  # default query split: val
        (["linear-probe", *rand, "--val-split", "train"], "--val-split train"),
    ):
        proc = geo_eval({}, *args)
        err = _one_line(proc)  # was: accepted, each query found itself (top-1 0% -> 84.9%)
        assert proc.returncode == 2 and needle in err and "--allow-same-split" in err, (args, err)


def test_allow_same_split_runs_and_says_so(shards, tmp_path, capsys):
    out = tmp_path / "knn.json"
    eval_cli.main(["knn", "--weights", "random", "--arch", "resnet18", "--data", shards, "--bank-split",
                   "train", "--query-split", "train", "--allow-same-split", "--image-size", "32",
                   "--num-workers", "0", "--k", "3", "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert "knn top-1:" in captured.out
    assert "geo-eval: warning: --allow-same-split" in captured.err
    result = json.loads(out.read_text())
    assert result["same_split"] is True and result["bank_split"] == result["query_split"] == "train"
    eval_cli.main(["knn", "--weights", "random", "--arch", "resnet18", "--data", shards, "--image-size", "32",
                   "--num-workers", "0", "--k", "3", "--out", str(out)])  # fmt: skip
    assert "same_split" not in json.loads(out.read_text()) and "warning" not in capsys.readouterr().err
