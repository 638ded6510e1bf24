"""Issue 17 (Hardening 2) item 18, follow-up: a shard of another build with the manifest's name AND size
(another k: same images, other cluster ids) passes the folder listing's check; the shard cache hashes it
as it is fetched and leaves it out (strict: refuses it). The real S3 server, behind a counting proxy."""

from __future__ import annotations

import hashlib
import os

import pyarrow.parquet as pq
import pytest

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.data.loader import LoaderConfig, eval_loader, pretrain_loader
from tests.s3_support import TEST_CREDENTIALS, FaultProxy, WindowFaults, bucket_fs, moto_server
from tests.shard_fixtures import make_tiny_shards
from tests.training.evaluation.test_hardening2_eval import run_cli

BUCKET = "geo-ssl-hardening2-sha"
OTHER = "train-000001.tar"  # replaced in the bucket by the other build's shard of the same name and size


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """Build a (k=4) in the bucket with its shard 1 swapped for build b's (k=9, same seed: same size)."""
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    make_tiny_shards(a, 24, 3, image_size=24, max_views=2, n_clusters=4, seed=0)
    make_tiny_shards(b, 24, 3, image_size=24, max_views=2, n_clusters=9, seed=0)
    theirs, ours = (b / OTHER).read_bytes(), (a / OTHER).read_bytes()
    assert len(theirs) == len(ours) and theirs != ours  # what the folder listing cannot tell apart
    with moto_server(BUCKET) as moto_url, FaultProxy(moto_url, WindowFaults()) as proxy:
        fs = bucket_fs(moto_url)
        for name in sorted(os.listdir(a)):
            fs.put_file(os.path.join(b if name == OTHER else a, name), f"{BUCKET}/shards/{name}")
        proxy.faults.matches = lambda method, path: method == "GET" and OTHER in path  # counts its GETs
        options = {"client_kwargs": {"endpoint_url": proxy.url}}
        rows = pq.read_table(a / "manifest.parquet").to_pylist()
        yield f"s3://{BUCKET}/shards", options, proxy.faults, {r["shard"]: r["sha256"] for r in rows}


def _cfg(url: str, options: dict, cache: str, **kw) -> LoaderConfig:
    base = dict(split="train", batch_size=4, image_size=16, num_workers=0, shuffle_buffer=0, decode="defer")
    return LoaderConfig(urls=url, storage_options=options, cache_dir=cache, **{**base, **kw})


def _cached(cache) -> dict[str, str]:
    """{shard name: sha256} of the shards admitted to the cache."""
    out = {}
    for name in os.listdir(cache):
        if name.endswith(".tar"):
            out[name.split("-", 2)[2]] = hashlib.sha256((cache / name).read_bytes()).hexdigest()
    return out


def test_same_size_shard_of_another_build_is_left_out_and_the_right_ones_cached(s3, tmp_path, capfd):
    url, options, counter, sha = s3
    cache = tmp_path / "cache"
    loader = pretrain_loader(_cfg(url, options, str(cache)))
    assert loader.plan.samples == 24  # same names and sizes: the listing lets it through
    before = counter.seen
    keys = [k for b in loader for k in b["key"]]
    fetched = counter.seen - before
    err = capfd.readouterr().err
    line = "fetched twice (another build's shard of the same size?); left out"
    assert err.count(line) == 1 and f"{OTHER}: sha256 " in err, err
    assert "sha256 is not manifest.parquet's, fetching it again" in err  # damage in transit ruled out first
    assert len(set(keys)) == 16 and loader.stats.missing == 8 and loader.stats.corrupt == 8
    assert any(OTHER in e for e in loader.stats.errors)
    # the manifest's shards were cached (and hashed) whole, the other build's was not admitted
    assert _cached(cache) == {n: sha[n] for n in ("train-000000.tar", "train-000002.tar")}
    assert not [n for n in os.listdir(cache) if n.startswith(".tmp-")]
    # the next epoch and the next run neither fetch it again nor say it twice in one run
    again = [k for b in loader for k in b["key"]]
    assert set(again) == set(keys) and counter.seen - before == fetched and loader.stats.missing == 16
    assert line not in capfd.readouterr().err
    ev = eval_loader(url, image_size=16, batch_size=8, num_workers=0, split="train", all_views=False,
                     storage_options=options, cache_dir=str(cache))  # fmt: skip
    assert len({k for b in ev for k in b["key"]}) == 16 and ev.stats.missing == 8
    assert counter.seen - before == fetched


def test_strict_refuses_a_same_size_shard_of_another_build(s3, tmp_path):
    url, options, _, _ = s3
    with pytest.raises(GeoSSLError, match=rf"{OTHER}: sha256 .*fetched twice.*--strict refuses") as info:
        list(pretrain_loader(_cfg(url, options, str(tmp_path / "cache"), strict=True)))
    assert "\n" not in str(info.value)
    with pytest.raises(GeoSSLError, match=rf"{OTHER}: sha256 .*--strict refuses"):
        list(eval_loader(url, image_size=16, batch_size=8, num_workers=0, split="train", strict=True,
                         storage_options=options, cache_dir=str(tmp_path / "cache")))  # fmt: skip


def test_said_once_per_run_with_worker_processes(s3, tmp_path, capfd):
    """Each epoch's workers are new processes: the mismatch file notes the run told, not the worker."""
    url, options, _, _ = s3
    loader = pretrain_loader(_cfg(url, options, str(tmp_path / "cache"), num_workers=2, batch_size=2))
    said = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        assert len({k for b in loader for k in b["key"]}) == 16
        said.append(capfd.readouterr().err.count("fetched twice (another build's shard of the same size?)"))
    assert said[0] >= 1 and said[1] == 0, said  # (two workers may meet it at once in the first epoch)
    assert loader.stats.missing == 16


class _DamagedOnce(FaultProxy):
    """Forwards to moto, but the body of the first GET of `key` comes with its last byte flipped: damage in
    transit (same size, other bytes), not another build. Without the object's checksum header (botocore
    checks a whole-object CRC where the store sends one; not every store or object has one)."""

    def __init__(self, upstream: str, key: str):
        super().__init__(upstream, WindowFaults())
        self.key, self.damaged = key, 0

    def _send(self, h, status: int, reason, headers, length: str) -> None:
        damage = h.command == "GET" and self.key in h.path and status < 300 and not self.damaged
        if damage:
            headers = [(k, v) for k, v in headers if not k.lower().startswith("x-amz-checksum")]
        FaultProxy._send(h, status, reason, headers, length)
        if damage:
            self.damaged, real = 1, h.wfile

            class Flip:
                def write(self, data: bytes) -> int:
                    h.wfile = real
                    return real.write(data[:-1] + bytes([data[-1] ^ 1]) if data else data)

            h.wfile = Flip()


def test_a_shard_damaged_in_transit_is_fetched_again_and_used(tmp_path, capfd):
    make_tiny_shards(tmp_path / "a", 24, 3, image_size=24, max_views=2, n_clusters=4, seed=0)
    with moto_server(BUCKET) as moto_url, _DamagedOnce(moto_url, f"transit/{OTHER}") as proxy:
        fs = bucket_fs(moto_url)
        for name in sorted(os.listdir(tmp_path / "a")):
            fs.put_file(os.path.join(tmp_path / "a", name), f"{BUCKET}/transit/{name}")
        options = {"client_kwargs": {"endpoint_url": proxy.url}}
        loader = pretrain_loader(_cfg(f"s3://{BUCKET}/transit", options, str(tmp_path / "cache")))
        keys = [k for b in loader for k in b["key"]]
    err = capfd.readouterr().err
    assert proxy.damaged == 1 and "sha256 is not manifest.parquet's, fetching it again" in err, err
    assert "left out" not in err and len(set(keys)) == 24 and loader.stats.missing == 0
    assert len(_cached(tmp_path / "cache")) == 3


def test_geo_pretrain_strict_with_a_cache_exits_2_in_one_line(s3, tmp_path):
    url, options, _, _ = s3
    endpoint = options["client_kwargs"]["endpoint_url"]
    proc = run_cli(
        "geo_ssl.training.trainer.cli",
        TEST_CREDENTIALS,
        "--data", url, "--out", str(tmp_path / "run"), "--arch", "resnet18", "--image-size", "32",
        "--batch-size", "8", "--num-workers", "0", "--knn-every", "0", "--n-clusters", "4", "--strict",
        "--epochs", "1", "--moco-k", "8",
        "--cache-dir", str(tmp_path / "cache"), "--storage-endpoint", endpoint,
    )  # fmt: skip
    last = proc.stderr.strip().splitlines()[-1]  # after the run's own "=>" lines
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (
        last.startswith(f"geo-pretrain: error: shard {url}/{OTHER}: sha256 ") and "--strict refuses" in last
    )
