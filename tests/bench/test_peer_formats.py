"""The benchmark's peer rows end to end on tiny shards: convert to MDS and litdata (every location's bytes
checked by the converter), then one epoch with each peer's own loader from the local folder and from the
moto bucket through the shaping proxy, in .venv-peers as bench_loader_latency runs them. A helper of a
benchmark, not a product feature: skipped where .venv-peers was not made."""

from __future__ import annotations

import pytest

from tests.bench.bench_loader_latency import PEER_PYTHON, PEER_VENV_HINT, measure_peer, peer_data
from tests.bench.peer_loaders import PEERS
from tests.net_shaping import ShapingProxy
from tests.s3_support import bucket_fs, moto_server
from tests.shard_fixtures import make_tiny_shards

pytestmark = pytest.mark.skipif(
    not PEER_PYTHON.exists(), reason=f"no .venv-peers for the peers' loaders (make it: {PEER_VENV_HINT})"
)
N, BATCH, CROP = 24, 4, 32


def test_peers_read_every_location_once_locally_and_through_the_proxy(tmp_path):
    data = tmp_path / "shards"
    make_tiny_shards(data, n_locations=N, n_shards=3, image_size=40)
    folders = peer_data(PEER_PYTHON, data, tmp_path)  # fails unless every location round-trips
    assert set(folders) == set(PEERS)
    for peer, folder in folders.items():  # the full path: decode + MoCo-v2 on each peer's records
        m = measure_peer(PEER_PYTHON, peer, "moco", 0, str(folder), tmp_path / "cache", BATCH, CROP)
        assert "error" not in m, m
        assert m["samples"] == m["distinct"] == N, m
    with moto_server("peer-formats") as url, ShapingProxy(url, delay_ms=5) as proxy:
        for peer, folder in folders.items():
            bucket_fs(url).put(str(folder), f"peer-formats/{peer}", recursive=True)
            stored = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            source = f"s3://peer-formats/{peer}"
            m = measure_peer(PEER_PYTHON, peer, "defer", 2, source, tmp_path / "cache", BATCH, CROP, proxy)
            assert "error" not in m, m
            assert m["samples"] == m["distinct"] == N, m
            # read through the proxy, not around it: at least the index and every data file
            assert m["requests"] >= 2 and m["proxy_mb"] * 1e6 >= stored * 0.5, m
