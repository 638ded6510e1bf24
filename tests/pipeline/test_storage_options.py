"""Storage options (issue 9 item 3): flags and GEO_SSL_STORAGE_* merged into fsspec options, and a real
S3 server (moto, loopback) that commands reach only through them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import fsspec.config
import pytest

from geo_ssl.pipeline import cli
from geo_ssl.pipeline.common import storage
from geo_ssl.pipeline.common.errors import GeoSSLError
from tests.s3_support import bucket_fs, free_port, plain_moto
from tests.shard_fixtures import make_tiny_shards

BUCKET = "geo-ssl-storage-opts"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def restore_storage_env(monkeypatch):
    """configure() writes GEO_SSL_STORAGE_*: put back what each test found (set, then delete, so that
    monkeypatch records the original state even of a variable that was not set)."""
    for k in ("ENV_OPTIONS", "ENV_ENDPOINT", "ENV_PROFILE", "ENV_REGION", "ENV_ANON"):
        monkeypatch.setenv(getattr(storage, k), "")
        monkeypatch.delenv(getattr(storage, k))


@pytest.fixture
def clean_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("FSSPEC_"):
            monkeypatch.delenv(k)
    monkeypatch.setattr(fsspec.config, "conf", {})
    return monkeypatch


def test_sources_merge_deeply_in_order(clean_env):
    clean_env.setattr(fsspec.config, "conf", {"s3": {"client_kwargs": {"endpoint_url": "http://fsspec:1"}}})
    assert storage.options_for("s3://b/k") == {"client_kwargs": {"endpoint_url": "http://fsspec:1"}}
    # the env's JSON (flat = s3) and its single settings lie over fsspec's config, key by key
    clean_env.setenv(
        storage.ENV_OPTIONS, json.dumps({"requester_pays": True, "client_kwargs": {"verify": False}})
    )
    clean_env.setenv(storage.ENV_REGION, "eu-west-1")
    assert storage.options_for("s3://b/k") == {
        "requester_pays": True,
        "client_kwargs": {"endpoint_url": "http://fsspec:1", "verify": False, "region_name": "eu-west-1"},
    }
    # flags override the environment and are written back to it (what spawned workers read)
    storage.configure(
        endpoint="http://flag:2", profile="geo", anon=True, options='{"s3": {"use_ssl": false}}'
    )
    assert os.environ[storage.ENV_ENDPOINT] == "http://flag:2" and os.environ[storage.ENV_ANON] == "true"
    opts = storage.options_for("s3a://b/k")
    assert opts["client_kwargs"] == {
        "endpoint_url": "http://flag:2",
        "verify": False,
        "region_name": "eu-west-1",
    }
    assert opts["profile"] == "geo" and opts["anon"] is True and opts["use_ssl"] is False
    assert opts["requester_pays"] is True
    # other protocols: their own mapping; local paths never get options
    assert storage.options_for("gs://b/k") == {"endpoint_url": "http://flag:2", "token": "anon"}
    assert storage.options_for("/tmp/x") == storage.options_for("file:///tmp/x") == {}


def test_bad_values_are_one_line_errors(clean_env):
    with pytest.raises(GeoSSLError, match="--storage-options: not valid JSON"):
        storage.configure(options="{endpoint: x}")
    with pytest.raises(GeoSSLError, match="must be a JSON object"):
        storage.configure(options="[1]")
    with pytest.raises(GeoSSLError, match="give a URL"):
        storage.configure(endpoint="127.0.0.1:9000")
    clean_env.setenv(storage.ENV_ANON, "maybe")
    with pytest.raises(GeoSSLError, match="GEO_SSL_STORAGE_ANON='maybe': use true or false"):
        storage.options_for("s3://b/k")


def test_secrets_are_redacted(clean_env):
    storage.configure(options={"key": "AKIAEXAMPLEKEY", "secret": "s3cr3t-VALUE"})
    text = "failed with s3cr3t-VALUE and AKIAEXAMPLEKEY at http://user:hunter22@127.0.0.1:9/b"
    out = storage.redact(text)
    assert "s3cr3t-VALUE" not in out and "AKIAEXAMPLEKEY" not in out and "hunter22" not in out
    assert "127.0.0.1:9/b" in out
    assert "s3cr3t" not in storage.describe()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    local = tmp_path_factory.mktemp("shards")
    make_tiny_shards(local, n_locations=6, n_shards=2, image_size=24)
    creds = tmp_path_factory.mktemp("aws") / "credentials"
    creds.write_text("[geo]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    with plain_moto(BUCKET) as endpoint:
        fs = bucket_fs(endpoint)
        for name in sorted(os.listdir(local)):  # public objects: anonymous reads may get them
            fs.put_file(str(local / name), f"{BUCKET}/shards/{name}")
            fs.chmod(f"{BUCKET}/shards/{name}", "public-read")
        fs.chmod(BUCKET, "public-read")
        yield {"endpoint": endpoint, "creds": str(creds)}


def _run(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_flags_reach_the_server_and_spawned_workers(server, capsys, monkeypatch):
    monkeypatch.delenv(storage.ENV_ENDPOINT, raising=False)
    url = f"s3://{BUCKET}/shards"
    # two workers: spawned processes, which get the endpoint only through the exported environment
    code, out, err = _run(
        ["validate", url, "--workers", "2", "--storage-endpoint", server["endpoint"]], capsys
    )
    # every shard was read (the fixture writes no dataset card: that is the one problem reported)
    assert code == 1 and err == "", out + err
    assert "2 shards, 6 samples, 19 views" in out and "[1 problem(s)] dataset.json: missing" in out


def test_env_setting_alone_reaches_the_server(server, capsys, monkeypatch):
    monkeypatch.setenv(storage.ENV_ENDPOINT, server["endpoint"])
    code, out, err = _run(["validate", f"s3://{BUCKET}/shards", "--workers", "1"], capsys)
    assert code == 1 and "2 shards, 6 samples, 19 views" in out, out + err


def test_wrong_endpoint_fails_on_one_line(server, capsys, monkeypatch):
    monkeypatch.delenv(storage.ENV_ENDPOINT, raising=False)
    dead = f"http://127.0.0.1:{free_port()}"
    code, _, err = _run(
        ["validate", f"s3://{BUCKET}/shards", "--workers", "1", "--storage-endpoint", dead], capsys
    )
    assert code in (2, 3)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geo-build-dataset: error:") and dead in lines[0]


def test_anon_and_profile_replace_missing_credentials(server, capsys, monkeypatch):
    monkeypatch.delenv(storage.ENV_ENDPOINT, raising=False)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", server["creds"])
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    base = ["validate", f"s3://{BUCKET}/shards", "--workers", "1", "--storage-endpoint", server["endpoint"]]
    code, _, err = _run(base, capsys)  # no credentials anywhere: refused on one line, exit 2
    assert code == 2 and "credentials" in err and len(err.strip().splitlines()) == 1
    code, out, err = _run([*base, "--storage-anon"], capsys)  # unsigned requests: moto serves them
    assert code == 1 and "6 samples" in out, out + err
    code, out, err = _run([*base, "--no-storage-anon", "--storage-profile", "geo"], capsys)
    assert code == 1 and "6 samples" in out, out + err


def _with_missing_profile(server, module: str, *argv: str) -> tuple[subprocess.CompletedProcess, float]:
    """The real CLI (`python -m module argv`) against the server with GEO_SSL_STORAGE_PROFILE=nosuch, whose
    only credentials file has [geo]; each retry would first wait >= 45 s (GEO_SSL_IO_BACKOFF=60)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_", "GEO_SSL_STORAGE_"))}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=server["creds"], AWS_CONFIG_FILE=os.devnull, AWS_MAX_ATTEMPTS="1",
        AWS_EC2_METADATA_DISABLED="true", GEO_SSL_STORAGE_ENDPOINT=server["endpoint"],
        GEO_SSL_STORAGE_PROFILE="nosuch", GEO_SSL_IO_ATTEMPTS="2", GEO_SSL_IO_BACKOFF="60",
        GEO_SSL_PROGRESS="0", OMP_NUM_THREADS="1",
    )  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", module, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    return proc, time.monotonic() - started


def _assert_setup_mistake(proc: subprocess.CompletedProcess, took: float, prog: str, creds: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in err and err.startswith(f"{prog}: error: "), (
        took,
        err[-3000:],
    )
    assert "nosuch" in err and "no such profile" in err and creds in err, err  # the name and where it looked
    assert "rerun" not in err and "unreachable" not in err, err  # a setup mistake, not an outage
    assert took < 30, took  # not retried: one retry alone would have waited 45 s or more


def test_missing_profile_is_a_setup_mistake_not_an_outage(server):
    """Was exit 3 "storage unreachable ... rerun when it is back", after retries on the paths that retry."""
    url = f"s3://{BUCKET}/shards"
    proc, took = _with_missing_profile(server, "geo_ssl.pipeline.cli", "validate", url, "--workers", "1")
    _assert_setup_mistake(proc, took, "geo-build-dataset", server["creds"])
    # geo-export reads through retry_io: the same line, no backoff
    out = str(Path(server["creds"]).parent / "w.safetensors")
    proc, took = _with_missing_profile(server, "geo_ssl.training.evaluation.export", f"{url}/ck.pth", out)
    _assert_setup_mistake(proc, took, "geo-export", server["creds"])


def test_missing_profile_stops_geo_pretrain_at_once(server, tmp_path):
    """geo-pretrain lists --data through retry_io before training: same verdict as the pipeline's."""
    data = f"s3://{BUCKET}/shards"
    proc, took = _with_missing_profile(
        server, "geo_ssl.training.trainer.cli", "--data", data, "--out", str(tmp_path / "run"), "--epochs", "1",
        "--num-workers", "0",
    )  # fmt: skip
    _assert_setup_mistake(proc, took, "geo-pretrain", server["creds"])
