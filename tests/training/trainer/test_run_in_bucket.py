"""`geo-pretrain --out s3://...` (issue 9 item 3): the run folder in a bucket of a real S3 server (moto,
loopback), reached only through --storage-* flags; resume from it on a machine with an empty run cache;
export from the bucket's checkpoint to a URL; secrets given as storage options never written anywhere."""

from __future__ import annotations

import json
import socket
import time

import pytest
import torch

from geo_ssl.pipeline.common import storage
from geo_ssl.training.evaluation import cli as eval_cli
from geo_ssl.training.evaluation import export
from geo_ssl.training.trainer import cli
from geo_ssl.training.trainer.run_log import read_metrics
from tests.s3_support import bucket_fs, free_port, plain_moto
from tests.shard_fixtures import make_tiny_shards

BUCKET = "geo-ssl-runs"
SECRET = "SECRET-never-logged-42"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    shards = tmp_path_factory.mktemp("shards")
    make_tiny_shards(shards, n_locations=16, n_shards=2, split="train", image_size=40, n_clusters=4)
    cache = tmp_path_factory.mktemp("run-cache")
    with plain_moto(BUCKET, GEO_SSL_RUN_CACHE=str(cache)) as endpoint:
        fs = bucket_fs(endpoint)
        fs.put(f"{shards}/", f"{BUCKET}/shards/", recursive=True)  # streamed from the bucket
        yield {"shards": f"s3://{BUCKET}/shards", "endpoint": endpoint, "fs": fs}


@pytest.fixture(autouse=True)
def restore_storage_env(monkeypatch):
    """The CLIs write their --storage-* settings to GEO_SSL_STORAGE_*: put back what each test found."""
    for var in (
        storage.ENV_OPTIONS,
        storage.ENV_ENDPOINT,
        storage.ENV_PROFILE,
        storage.ENV_REGION,
        storage.ENV_ANON,
    ):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)


def _tiny(env, out: str, *extra: str) -> list[str]:
    return [
        "--data", env["shards"], "--out", out, "--method", "moco+geo+tp", "--arch", "resnet18",
        "--image-size", "32", "--batch-size", "8", "--moco-k", "16", "--moco-m", "0.9", "--lr", "0.03",
        "--epochs", "1", "--epoch-samples", "24", "--num-workers", "0", "--shuffle-buffer", "8",
        "--n-clusters", "4", "--knn-every", "0", "--log-every", "1", "--bn-splits", "2",
        "--storage-endpoint", env["endpoint"], *extra,
    ]  # fmt: skip


def test_run_folder_in_bucket_resumes_and_exports(env, capsys, monkeypatch, tmp_path):
    fs, run = env["fs"], f"s3://{BUCKET}/run"
    options = json.dumps({"key": "testing", "secret": SECRET})  # moto takes any key pair
    cli.main(_tiny(env, run, "--max-steps", "2", "--storage-options", options))
    out1, err1 = capsys.readouterr()
    keys = sorted(k.split("/run/", 1)[1] for k in fs.find(f"{BUCKET}/run"))
    tb = [k for k in keys if k.startswith("tb/events.out.tfevents")]
    # checkpoint, config, metrics and TensorBoard in the bucket; the lock object released; no temp keys
    assert keys == sorted(["checkpoint-last.pt", "config.toml", "metrics.jsonl", *tb]) and tb
    assert [r["step"] for r in read_metrics(run, "train")] == [1, 2]
    ckpt = torch.load(fs.open(f"{BUCKET}/run/checkpoint-last.pt", "rb"), weights_only=True)
    assert ckpt["step"] == 2
    # the secret went to the server only: not in outputs, config, checkpoint config, metrics or logs
    for text in (out1, err1, fs.cat(f"{BUCKET}/run/config.toml").decode(), json.dumps(ckpt["config"]),
                 fs.cat(f"{BUCKET}/run/metrics.jsonl").decode()):  # fmt: skip
        assert SECRET not in text

    # another machine: an empty run cache, the rest of the config from the bucket's config.toml
    monkeypatch.setenv("GEO_SSL_RUN_CACHE", str(tmp_path / "other-cache"))
    cli.main(["--out", run, "--resume", "--storage-endpoint", env["endpoint"]])  # to the planned end
    _, err2 = capsys.readouterr()
    assert f"=> resumed {run}/checkpoint-last.pt at step 2" in err2
    assert [r["step"] for r in read_metrics(run, "train")] == [1, 2, 3]  # none lost or repeated
    assert len([k for k in fs.find(f"{BUCKET}/run/tb") if "tfevents" in k]) == 2  # first run's + resumed

    dst = f"s3://{BUCKET}/exports/r18.safetensors"
    export.main([f"{run}/checkpoint-last.pt", dst, "--storage-endpoint", env["endpoint"]])
    out3, _ = capsys.readouterr()
    assert "resnet18 backbone (safetensors)" in out3
    from safetensors.torch import load as load_safetensors

    tensors = load_safetensors(fs.cat(f"{BUCKET}/exports/r18.safetensors"))
    assert "conv1.weight" in tensors and not any(k.startswith("fc.") for k in tensors)
    card = json.loads(fs.cat(f"{BUCKET}/exports/r18.safetensors.json"))
    assert card["from"] == f"{run}/checkpoint-last.pt" and card["step"] == 3
    assert fs.exists(f"{BUCKET}/exports/r18.safetensors.md")

    # geo-eval: weights and shards from the bucket, the result JSON into it
    eval_cli.main(["knn", "--weights", dst, "--data", env["shards"], "--bank-split", "train",
                   "--query-split", "train", "--allow-same-split", "--image-size", "32", "--batch-size", "8", "--num-workers", "0",
                   "--k", "3", "--out", f"s3://{BUCKET}/exports/knn.json", "--storage-endpoint", env["endpoint"]])  # fmt: skip
    assert json.loads(fs.cat(f"{BUCKET}/exports/knn.json"))["query"] > 0


def test_lock_object_of_another_run_refuses_on_one_line(env, capsys):
    holder = {"pid": 1, "host": socket.gethostname() + "-elsewhere", "command": "geo-pretrain", "since": "x"}
    env["fs"].pipe(f"{BUCKET}/busy/.geo-ssl.lock", json.dumps(holder).encode())
    with pytest.raises(SystemExit) as exit_info:
        cli.main(_tiny(env, f"s3://{BUCKET}/busy", "--max-steps", "1"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "another run is writing here" in err and "-elsewhere" in err
    assert not env["fs"].exists(f"{BUCKET}/busy/checkpoint-last.pt")


def test_unreachable_endpoint_stops_before_training(env, capsys):
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*_tiny(env, f"s3://{BUCKET}/never", "--max-steps", "1"), "--storage-endpoint", dead])
    err = capsys.readouterr().err
    assert exit_info.value.code == 3 and len(err.strip().splitlines()) == 1
    assert err.startswith("geo-pretrain: error: --out s3://") and dead in err


def test_lock_heartbeat_and_takeover_of_a_dead_host(env, monkeypatch):
    from geo_ssl.pipeline.common.errors import GeoSSLError
    from geo_ssl.training.trainer.run_store import RunStore

    monkeypatch.setenv(storage.ENV_ENDPOINT, env["endpoint"])
    monkeypatch.setenv("GEO_SSL_RUN_LOCK_HEARTBEAT", "0.05")
    fs, key = env["fs"], f"{BUCKET}/beat/.geo-ssl.lock"
    other = {"pid": 1, "host": "preempted-vm", "command": "geo-pretrain", "since": "x", "token": "t"}
    fs.pipe(key, json.dumps({**other, "heartbeat": time.time()}).encode())
    with pytest.raises(GeoSSLError, match=r"another run is writing here .*preempted-vm"):
        RunStore(f"s3://{BUCKET}/beat").lock("geo-pretrain")  # a live heartbeat: refused
    fs.pipe(key, json.dumps({**other, "heartbeat": time.time() - 3600}).encode())
    store = RunStore(f"s3://{BUCKET}/beat")
    note = store.lock("geo-pretrain")  # silent for an hour (> GEO_SSL_RUN_LOCK_STALE 600 s): taken over
    assert note and "preempted-vm" in note and "no heartbeat for 3600 s" in note
    first = json.loads(fs.cat(key))
    assert first["host"] == socket.gethostname()
    deadline = time.time() + 10
    while json.loads(fs.cat(key))["heartbeat"] == first["heartbeat"] and time.time() < deadline:
        time.sleep(0.05)
    assert json.loads(fs.cat(key))["heartbeat"] > first["heartbeat"]  # refreshed while held
    store.release()
    assert not fs.exists(key)
