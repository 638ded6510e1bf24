"""An endpoint URL with user:password@ (issue 17, item 26): every CLI refuses it on one line, exit 2, with
the password shown as ***, before any request (aiohttp would refuse it and every attempt would look like
an outage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.s3_support import free_port

SECRET = "hunter22-pw"
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith(("GEO_SSL_STORAGE_", "FSSPEC_", "AWS_"))},
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_MAX_ATTEMPTS": "1",
    "GEO_SSL_IO_ATTEMPTS": "1",
    "GEO_SSL_PROGRESS": "0",
}
ENDPOINT = f"http://alice:{SECRET}@127.0.0.1:{free_port()}"

COMMANDS = {
    "geo-build-dataset": ["geo_ssl.pipeline.cli", "index-fmow", "--root", "s3://bkt/fmow", "--out", "s3://bkt/ix"],
    "geo-eval": ["geo_ssl.training.evaluation.cli", "knn", "--weights", "random", "--arch", "resnet18",
                 "--data", "s3://bkt/shards"],
    "geo-pretrain": ["geo_ssl.training.trainer.cli", "--data", "s3://bkt/shards", "--out", "s3://bkt/run"],
    "geo-export": ["geo_ssl.training.evaluation.export", "s3://bkt/run/last.pt", "s3://bkt/backbone.safetensors"],
}  # fmt: skip


def _refused(proc: subprocess.CompletedProcess, prog: str, where: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and SECRET not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{prog}: error: {where} http://***@127.0.0.1:"), lines[0]
    assert "not supported" in lines[0]


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_every_cli_refuses_a_user_and_password_in_the_endpoint_flag(prog: str, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", *COMMANDS[prog], "--storage-endpoint", ENDPOINT],
        capture_output=True, text=True, timeout=120, env=ENV, cwd=tmp_path,
    )  # fmt: skip
    _refused(proc, prog, "--storage-endpoint")


@pytest.mark.parametrize(
    "env, where",
    [
        ({"GEO_SSL_STORAGE_ENDPOINT": ENDPOINT}, "GEO_SSL_STORAGE_ENDPOINT"),
        (
            {"GEO_SSL_STORAGE_OPTIONS": json.dumps({"client_kwargs": {"endpoint_url": ENDPOINT}})},
            "--storage-options/GEO_SSL_STORAGE_OPTIONS client_kwargs.endpoint_url",
        ),
    ],
)
def test_the_environment_and_storage_options_are_checked_too(env: dict, where: str, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", *COMMANDS["geo-build-dataset"]],
        capture_output=True, text=True, timeout=120, env={**ENV, **env}, cwd=tmp_path,
    )  # fmt: skip
    _refused(proc, "geo-build-dataset", where)
