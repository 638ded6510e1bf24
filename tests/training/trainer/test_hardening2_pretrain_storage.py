"""geo-pretrain against object storage that does not answer, has no credentials, or goes down mid-run; a
run whose shards are all in --cache-dir while the store is down; a dataset.json that is not an object
(issue 17 items 9, 10 and 32). moto's real S3 server, a port nothing listens on, a fault proxy."""

from __future__ import annotations

import os

import pytest

from geo_ssl.pipeline.common import storage
from geo_ssl.training.trainer import cli
from geo_ssl.training.trainer.run_log import read_metrics
from tests.s3_support import (
    TEST_CREDENTIALS,
    FaultProxy,
    KeyFaults,
    bucket_fs,
    free_port,
    moto_server,
    patched_env,
)
from tests.shard_fixtures import make_tiny_shards
from tests.training.evaluation.test_hardening2_eval import run_cli

BUCKET = "geo-ssl-pretrain-h2"
_QUICK = {
    "AWS_MAX_ATTEMPTS": "1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "GEO_SSL_IO_ATTEMPTS": "2",
    "GEO_SSL_IO_BACKOFF": "0.05",
    "GEO_SSL_PROGRESS": "0",
}


@pytest.fixture(scope="module")
def local_shards(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("shards")
    make_tiny_shards(folder, n_locations=16, n_shards=2, split="train", image_size=40, n_clusters=4)
    make_tiny_shards(folder, n_locations=4, n_shards=1, split="val", image_size=40, n_clusters=4, seed=1)
    return str(folder)


@pytest.fixture(autouse=True)
def restore_storage_env(monkeypatch):
    """The CLI writes its --storage-* settings to GEO_SSL_STORAGE_*: put back what each test found."""
    for var in (storage.ENV_OPTIONS, storage.ENV_ENDPOINT, storage.ENV_PROFILE, storage.ENV_REGION,
                storage.ENV_ANON):  # fmt: skip
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)


def _tiny(data: str, out: str, *extra: str) -> list[str]:
    return [
        "--data", data, "--out", out, "--method", "moco+geo+tp", "--arch", "resnet18",
        "--image-size", "32", "--batch-size", "8", "--moco-k", "8", "--moco-m", "0.9", "--lr", "0.03",
        "--epochs", "1", "--num-workers", "0", "--shuffle-buffer", "8", "--n-clusters", "4",
        "--knn-every", "0", "--log-every", "1", "--bn-splits", "2", *extra,
    ]  # fmt: skip


def geo_pretrain(env: dict[str, str], *args: str):
    return run_cli("geo_ssl.training.trainer.cli", env, *args)


def _one_line(proc) -> str:
    err = proc.stderr.strip()
    assert err.startswith("geo-pretrain: error: ") and "\n" not in err, err[-3000:]
    return err


def test_storage_down_or_no_credentials_at_start_is_one_line(tmp_path):
    data = f"s3://{BUCKET}/shards"
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = geo_pretrain(TEST_CREDENTIALS, *_tiny(data, str(tmp_path / "a"), "--storage-endpoint", dead))
    err = _one_line(proc)  # was: 115 lines of EndpointConnectionError traceback from the preflight, exit 1
    assert proc.returncode == 3 and data in err and "EndpointConnectionError" in err and "rerun" in err, err
    with moto_server(BUCKET) as endpoint:
        proc = geo_pretrain({}, *_tiny(data, str(tmp_path / "b"), "--storage-endpoint", endpoint))
    err = _one_line(proc)  # was: a NoCredentialsError traceback, exit 1
    assert proc.returncode == 2 and "NoCredentialsError" in err and "AWS_ACCESS_KEY_ID" in err, err
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_storage_failing_mid_run_exits_3(local_shards, tmp_path):
    """Listing and manifest answer, every shard GET fails: the loader gives up naming the shard (exit 3,
    as --help and the README promise; was 2, the exit of a user mistake)."""
    with moto_server(BUCKET) as moto_url, FaultProxy(moto_url, KeyFaults()) as proxy:
        bucket_fs(moto_url).put(f"{local_shards}/", f"{BUCKET}/failing/", recursive=True)
        proxy.faults.fail(".tar", times=-1, code="ServiceUnavailable")
        args = _tiny(f"s3://{BUCKET}/failing", str(tmp_path / "run"), "--storage-endpoint", proxy.url)
        proc = geo_pretrain(TEST_CREDENTIALS, *args)
    err = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert err.startswith("geo-pretrain: error: shard s3://") and "attempts" in err, err


def test_cached_shards_train_while_the_store_is_down(local_shards, tmp_path, capsys):
    """Training shards and the kNN monitor's (train bank, val queries) all from --cache-dir."""
    data, cache = f"s3://{BUCKET}/cached", str(tmp_path / "cache")
    flags = ("--cache-dir", cache, "--knn-every", "1")
    with patched_env({**TEST_CREDENTIALS, **_QUICK}, scrub=True):
        with moto_server(BUCKET) as endpoint:
            bucket_fs(endpoint).put(f"{local_shards}/", f"{BUCKET}/cached/", recursive=True)
            cli.main(_tiny(data, str(tmp_path / "run1"), *flags, "--storage-endpoint", endpoint))
        assert len([n for n in os.listdir(cache) if n.endswith(".tar")]) == 3  # the first run filled it
        capsys.readouterr()
        # the server is stopped: nothing listens at the endpoint any more (was: a 115-line traceback)
        cli.main(_tiny(data, str(tmp_path / "run2"), *flags, "--storage-endpoint", endpoint))
    err = capsys.readouterr().err
    assert "using the shard list cached" in err and "using the cached copy" in err, err
    assert os.path.exists(tmp_path / "run2" / "checkpoint-last.pt")
    assert [r["step"] for r in read_metrics(str(tmp_path / "run2"), "train")] == [1, 2]
    assert len(read_metrics(str(tmp_path / "run2"), "knn")) == 1
    # without a cached list (another --cache-dir) the store being down stops the run on one line, exit 3
    with patched_env({**TEST_CREDENTIALS, **_QUICK}, scrub=True), pytest.raises(SystemExit) as exit_info:
        cli.main(_tiny(data, str(tmp_path / "run3"), "--cache-dir", str(tmp_path / "empty"),
                       "--storage-endpoint", endpoint))  # fmt: skip
    assert exit_info.value.code == 3 and len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("card", ["[1, 2]", '"fmow"', "{not json"])
def test_a_dataset_card_that_is_not_an_object_is_one_line(local_shards, tmp_path, capsys, card):
    data = tmp_path / "shards"
    data.mkdir()
    for name in os.listdir(local_shards):
        os.symlink(os.path.join(local_shards, name), data / name)
    (data / "dataset.json").write_text(card)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(_tiny(str(data), str(tmp_path / "run"), "--max-steps", "1"))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err, err  # was: AttributeError traceback
    assert err.startswith(f"geo-pretrain: error: {data}/dataset.json: ") and "bad dataset card" in err, err
