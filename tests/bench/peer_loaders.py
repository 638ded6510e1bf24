"""One measured epoch of a peer's own streaming loader (MosaicML streaming, litdata) over the data that
peer_formats.py converted, or of geo-ssl's loader over the shards (`--peer geo-ssl`, run by the test
venv's python), for bench_loader_latency's rows. One process per row (a fresh interpreter, an empty
cache, no S3 server or proxy sharing its interpreter); peers run in .venv-peers. Prints one JSON line:

    .venv-peers/bin/python -m tests.bench.peer_loaders --peer mds --load moco --workers 2 \
        --source s3://bucket/peers/mds --cache /tmp/empty-dir --endpoint http://127.0.0.1:PORT

The work per sample is geo-ssl's own, so only storage and loader differ: the record back to the webdataset
sample (peer_formats.from_peer), geo-ssl's view selection (two temporal views, selection.pick_views), and
for "moco" geo-ssl's decode + MoCo-v2 crop/augment into uint8 views (selection.render_views), done in the
peer's documented place for a transform (MosaicML: a StreamingDataset subclass's __getitem__; litdata: its
`transform=`), batched by the peer's DataLoader with torch's default collate.

Settings, each peer's documented defaults for remote streaming unless said: shuffle on; drop_last; MosaicML
`predownload` = 8 x batch (its default), `batch_size` given to the dataset (its docs ask for it), the
endpoint from S3_ENDPOINT_URL (how its S3 download takes one), the index's boto3 client dropped before the
workers fork (mds_loader says why); litdata `max_pre_download` 2 (default), the
endpoint in `storage_options={"endpoint_url": ...}` (handed to its boto3 client, and from it to obstore,
which downloads its chunks; obstore is told to allow the loopback's plain http), StreamingDataLoader.
The cache folder must be empty: every row starts cold.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from tests.bench.peer_formats import from_peer

PEERS = ("mds", "litdata")
GEO_SSL = (
    "geo-ssl"  # geo-ssl's own loader, run the same way (a fresh process per row) for a fair side by side
)
_LOADS = ("defer", "moco")


@contextmanager
def peak_pss(every: float = 0.25) -> Iterator[list[float]]:
    """Samples the PSS of this process and its children (loader workers) while the block runs; yields a
    one-item list that holds the peak in MiB afterwards."""
    from tests.bench.bench_loader import _tree_pss

    peak, stop = [0.0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_pss() / 2**20)
            stop.wait(every)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield peak
    finally:
        stop.set()
        t.join()


class GeoSample:
    """A peer record to what geo-ssl's loader yields per location: two temporal views chosen as geo-ssl
    chooses them, then their JPEG bytes ("defer") or decoded, MoCo-v2-augmented uint8 crops ("moco").
    Randomness is drawn per (seed, key), so it does not depend on the worker that gets the record."""

    def __init__(self, load: str, crop: int, seed: int = 0):
        from geo_ssl.training.data.augment import MocoV2Augment

        self.load, self.crop, self.seed = load, crop, seed
        self.aug = MocoV2Augment(image_size=crop)

    def __call__(self, record: dict) -> dict:
        from geo_ssl.training.data.selection import choose_views, pick_views, render_views, seed_of

        sample = from_peer(record)
        rng = random.Random(seed_of(self.seed, "peer", sample["__key__"]))
        picked = pick_views(
            sample, lambda fields: tuple(fields[i] for i in choose_views(rng, len(fields), 2, True))
        )
        out = {"geo_cluster": picked.geo, "category": picked.category, "key": picked.key}
        if self.load == "defer":
            return {"q_jpeg": picked.data[picked.fields[0]], "k_jpeg": picked.data[picked.fields[1]], **out}
        pair = np.empty((2, self.crop, self.crop, 3), np.uint8)
        render_views(picked, self.crop, lambda w, h: self.aug.sample(rng, w, h), outs=[pair[0], pair[1]])
        return {"pair": pair, **out}


def mds_loader(source: str, cache: str, batch: int, workers: int, transform: Callable, seed: int):
    """MosaicML: StreamingDataset (remote -> local cache; a local folder is read in place) + DataLoader."""
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory
    from torch.utils.data import DataLoader

    class Dataset(StreamingDataset):
        def __getitem__(self, idx: int) -> dict:
            return transform(super().__getitem__(idx))

    clean_stale_shared_memory()  # a crashed earlier row's shared memory would stall this one
    remote = source if "://" in source else None
    ds = Dataset(
        remote=remote, local=cache if remote else source, shuffle=True, shuffle_seed=seed, batch_size=batch
    )
    # the index was downloaded here with a boto3 client that forked workers would share (one keep-alive
    # socket for two processes: a download then hangs for the 60 s read timeout); its own clean_up drops
    # the client, as its pickling (spawn) does, so each worker makes its own
    for stream in ds.streams:
        stream._downloader.clean_up()
    return DataLoader(ds, batch_size=batch, num_workers=workers, drop_last=True)


def litdata_loader(source: str, cache: str, batch: int, workers: int, transform: Callable, seed: int):
    """litdata: StreamingDataset (Dir(cache, url) for a bucket; a local folder in place) +
    StreamingDataLoader."""
    from litdata import StreamingDataLoader, StreamingDataset
    from litdata.streaming import downloader
    from litdata.streaming.resolver import Dir

    remote = "://" in source
    # its chunk downloads go through obstore, which refuses a plain-http endpoint ("builder error")
    # unless allowed; a real bucket is https, so allowing it here keeps litdata on its own fast path
    downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = True
    ds = StreamingDataset(
        Dir(path=cache, url=source) if remote else source,
        shuffle=True,
        seed=seed,
        drop_last=True,
        storage_options={"endpoint_url": os.environ["S3_ENDPOINT_URL"]} if remote else None,
        transform=transform,
    )
    return StreamingDataLoader(ds, batch_size=batch, num_workers=workers, drop_last=True)


def geossl_loader(
    source: str, batch: int, workers: int, load: str, crop: int, seed: int, shuffle_buffer: int
) -> Iterator[dict]:
    """geo-ssl's StreamingLoader as geo-pretrain reads it ("moco": uint8 MoCo-v2 pairs; "defer": JPEG
    bytes), from a shard folder or a bucket (the endpoint from S3_ENDPOINT_URL, as the peers take it)."""
    from geo_ssl.training.data.loader import LoaderConfig, pretrain_loader

    kind = dict(decode="defer") if load == "defer" else dict(decode="cpu", augment=True, output="uint8")
    remote = "://" in source
    options = {"client_kwargs": {"endpoint_url": os.environ["S3_ENDPOINT_URL"]}} if remote else None
    cfg = LoaderConfig(
        source, split="train", batch_size=batch, image_size=crop, num_workers=workers, seed=seed,
        shuffle_buffer=shuffle_buffer, storage_options=options, **kind,
    )  # fmt: skip
    return pretrain_loader(cfg)


def epoch(
    peer: str,
    load: str,
    source: str,
    cache: str,
    batch: int,
    workers: int,
    crop: int,
    seed: int,
    shuffle_buffer: int = 100,
) -> dict:
    """One epoch, measured as bench_loader_storage._epoch measures geo-ssl's: samples/s from the loader
    built on, the first batch from before it is built (index reads, first shard, first transform)."""
    if os.path.exists(cache) and os.listdir(cache):
        raise SystemExit(f"peer_loaders: error: {cache}: the cache folder must be empty (a cold row)")
    importlib.import_module({"mds": "streaming", "litdata": "litdata", GEO_SSL: "s3fs"}[peer])  # not timed
    with peak_pss() as peak:
        t_build = time.perf_counter()
        if peer == GEO_SSL:
            loader = geossl_loader(source, batch, workers, load, crop, seed, shuffle_buffer)
        else:
            make = {"mds": mds_loader, "litdata": litdata_loader}[peer]
            loader = make(source, cache, batch, workers, GeoSample(load, crop, seed), seed)
        t0 = time.perf_counter()
        n, n_first, t_first, keys = 0, 0, None, set()
        for b in loader:
            n += len(b["key"])
            keys.update(b["key"])
            if t_first is None:
                t_first, n_first = time.perf_counter(), n
        t_end = time.perf_counter()
    return {
        "peer": peer,
        "samples": n,
        "distinct": len(keys),
        "wall_s": t_end - t0,
        "rate": n / (t_end - t0),
        # after the first batch: what a long epoch runs at once started (start-up costs are first_batch_s)
        "steady_rate": (n - n_first) / (t_end - t_first) if n > n_first else float("nan"),
        "first_batch_s": t_first - t_build,
        "peak_pss_mb": peak[0],
        "retries": getattr(getattr(loader, "stats", None), "retries", "-"),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--peer", choices=(*PEERS, GEO_SSL), required=True)
    p.add_argument("--load", choices=_LOADS, required=True)
    p.add_argument("--source", required=True, help="the converted folder, local or s3://")
    p.add_argument("--cache", required=True, help="an empty folder for the peer's local copies")
    p.add_argument("--endpoint", help="S3 endpoint URL (the shaping proxy)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--shuffle-buffer", type=int, default=100, help="geo-ssl's (the peers shuffle their own way)"
    )
    args = p.parse_args(argv)
    if args.endpoint:
        os.environ["S3_ENDPOINT_URL"] = args.endpoint
    import cv2
    import torch

    torch.set_num_threads(1)  # as geo-ssl's loader workers and its benchmark process run
    cv2.setNumThreads(1)
    os.environ.setdefault("GEO_SSL_PROGRESS", "0")
    m = epoch(
        args.peer, args.load, args.source, args.cache, args.batch_size, args.workers, args.crop, args.seed,
        args.shuffle_buffer,
    )  # fmt: skip
    print(json.dumps(m), flush=True)


if __name__ == "__main__":
    main()
