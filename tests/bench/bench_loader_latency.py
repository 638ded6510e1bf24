"""Benchmark the loader against a bucket with a network in front: the same shards from local disk and from
moto's S3 server behind a shaping proxy on loopback (tests/net_shaping.py: a first-byte delay per request,
a bandwidth cap per connection), in the same run, at several delays and worker counts.

    python -m tests.bench.bench_loader_latency --out bench-out/loader_latency \
        [--delays 0,20,50,100] [--workers 0,2,4] [--bandwidth 50MB] [--quick]

Two loads per source: decode="defer" (the storage path: read, group, choose views, shuffle, batch JPEG
bytes; nothing decoded) and full MoCo-v2 pairs (decode, crop, augment; uint8 batches as geo-pretrain
reads them). Each row: samples/s over the epoch, the ratio to local disk with the same load and workers,
the time to the first batch (loader built, listing and manifest read, first shard bytes, the shuffle
buffer's first fill), the requests and bytes through the proxy, the loader's read retries, and the peak
PSS of the benchmark process and its loader workers. The server and the proxy are threads of this process
and share its cores, so S3 figures are a lower bound; the "+0 ms" rows include the proxy's own cost (it
relays every answer through Python), the delayed rows add the delay on top of it. Variants alternate;
each figure is the best of --repeats. --quick: a smoke of the whole path in seconds (small shards, delays
0 and 50 ms, 0 and 2 workers, one round), not figures to quote; the full matrix needs an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.shards.options import parse_size
from geo_ssl.training.data.loader import LoaderConfig
from tests.bench.bench_loader import _tree_pss
from tests.bench.bench_loader_storage import _epoch, shard_folder, upload
from tests.net_shaping import ShapingProxy
from tests.s3_support import moto_server

BUCKET = "bench-latency"
_FULL = {"delays": "0,20,50,100", "workers": "0,2,4", "locations": 600, "shards": 8, "image_size": 192,
         "crop": 224, "repeats": 2}  # fmt: skip
_QUICK = {"delays": "0,50", "workers": "0,2", "locations": 240, "shards": 4, "image_size": 128, "crop": 112,
          "repeats": 1}  # fmt: skip
LOADS = {
    "defer": dict(decode="defer"),
    "moco": dict(decode="cpu", augment=True, output="uint8"),
}


@contextmanager
def peak_pss(every: float = 0.25) -> Iterator[list[float]]:
    """Samples the PSS of this process and its children (the loader's workers) while the block runs;
    yields a one-item list that holds the peak in MiB afterwards."""
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


def measure(make: Callable[[], LoaderConfig], proxy: ShapingProxy | None = None, fs=None) -> dict:
    """One epoch (bench_loader_storage._epoch) with its peak PSS, the load average, and what went through
    the proxy during it. `fs`: the loader's s3fs client, whose listing cache is emptied first, so every
    row pays the same requests (a listing cached by an earlier row would make a later one look faster);
    the client itself is kept (making one is CPU, not network)."""
    if fs is not None:
        fs.invalidate_cache()
    before = (proxy.stats.total_requests, proxy.stats.bytes_sent) if proxy else (0, 0)
    with peak_pss() as peak:
        m = _epoch(make())
    m["peak_pss_mb"] = peak[0]
    m["load_avg"] = os.getloadavg()[0]
    if proxy:
        m["requests"] = proxy.stats.total_requests - before[0]
        m["proxy_mb"] = (proxy.stats.bytes_sent - before[1]) / 1e6
    return m


def _numbers(text: str, kind: type) -> list:
    return [kind(x) for x in text.split(",") if x.strip()]


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--delays", help=f"first-byte delays in ms (default {_FULL['delays']})")
    p.add_argument("--workers", help=f"loader worker counts (default {_FULL['workers']})")
    p.add_argument("--bandwidth", default="50MB", help="cap per connection, bytes/s (50MB, 1GiB; 0: none)")
    p.add_argument("--loads", default=",".join(LOADS), help="defer, moco or both")
    p.add_argument("--locations", type=int)
    p.add_argument("--shards", type=int)
    p.add_argument("--image-size", type=int, help="shorter side of the stored views")
    p.add_argument("--crop", type=int, help="MoCo-v2 crop size")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shuffle-buffer", type=int, default=100)
    p.add_argument("--repeats", type=int)
    p.add_argument("--quick", action="store_true", help="a smoke run of the path, not figures to quote")
    args = p.parse_args(argv)
    for k, v in (_QUICK if args.quick else _FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    try:
        args.delays, args.workers = _numbers(args.delays, float), _numbers(args.workers, int)
    except ValueError:
        p.error(f"--delays {args.delays} / --workers {args.workers}: comma-separated numbers, e.g. 0,20,50")
    args.loads = [x for x in args.loads.split(",") if x]
    if unknown := set(args.loads) - set(LOADS):
        p.error(f"--loads: unknown {', '.join(sorted(unknown))} (choose from {', '.join(LOADS)})")
    try:
        args.bandwidth = parse_size(args.bandwidth)
    except GeoSSLError as exc:
        p.error(f"--bandwidth: {exc}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    os.environ.setdefault("GEO_SSL_PROGRESS", "0")
    import cv2
    import s3fs
    import torch

    torch.set_num_threads(1)  # as in the loader's workers
    cv2.setNumThreads(1)
    work = Path(args.out).resolve()
    # one build per size: a --quick run's shards are never taken for the full run's
    build = work / f"data-{args.locations}x{args.shards}-{args.image_size}"
    data, shard_bytes = shard_folder(build, args.locations, args.shards, args.image_size)
    load_start = os.getloadavg()
    rows: list[dict] = []
    with moto_server(BUCKET) as moto_url, ShapingProxy(moto_url, bandwidth=args.bandwidth) as proxy:
        bucket = upload(moto_url, data, f"{BUCKET}/shards")  # straight to the server: setup, not measured
        options = {"client_kwargs": {"endpoint_url": proxy.url}}
        fs = s3fs.S3FileSystem(**options)  # the instance the loader's fsspec.open gets (same options)

        def config(urls: str, load: str, workers: int, **kw) -> Callable[[], LoaderConfig]:
            return lambda: LoaderConfig(
                urls, split="train", batch_size=args.batch_size, image_size=args.crop, num_workers=workers,
                shuffle_buffer=args.shuffle_buffer, **LOADS[load], **kw,
            )  # fmt: skip

        measure(config(str(data), "defer", 0))  # warm the page cache and imports
        for r in range(args.repeats):
            for load in args.loads:
                for workers in args.workers:
                    m = measure(config(str(data), load, workers))
                    rows.append({"load": load, "workers": workers, "source": "local disk", "round": r, **m})
                    _say(rows[-1])
                    for delay in args.delays:
                        proxy.delay_ms = delay
                        m = measure(config(bucket, load, workers, storage_options=options), proxy, fs)
                        source, m["delay_ms"] = f"S3 +{delay:g} ms", delay
                        rows.append({"load": load, "workers": workers, "source": source, "round": r, **m})
                        _say(rows[-1])
    text = report(args, rows, shard_bytes, load_start, os.getloadavg())
    work.mkdir(parents=True, exist_ok=True)
    (work / "latency.md").write_text(text)
    (work / "latency.json").write_text(json.dumps({"args": vars(args), "runs": rows}, indent=1))
    print(text)


def _say(row: dict) -> None:
    print(
        f"{row['load']} {row['workers']} workers {row['source']} round {row['round']}: {row['rate']:.0f} "
        f"samples/s, first batch {row['first_batch_s']:.2f} s",
        flush=True,
    )


def report(args: argparse.Namespace, rows: list[dict], shard_bytes: int, start: tuple, end: tuple) -> str:
    """The markdown table: best round per (load, workers, source), ratio to local disk best to best."""
    best: dict[tuple, dict] = {}
    for row in rows:
        key = (row["load"], row["workers"], row["source"])
        if key not in best or row["rate"] > best[key]["rate"]:
            best[key] = row
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    cap = f"{args.bandwidth / 1e6:g} MB/s per connection" if args.bandwidth else "no bandwidth cap"
    lines = [
        f"Loader from a shaped network (moto S3 on loopback behind a proxy: first-byte delay per request, "
        f"{cap}) against local disk in the same run: {args.locations} locations in {args.shards} shards, "
        f"{shard_bytes / 1e6:.1f} MB, stored views of shorter side {args.image_size}, "
        f"MoCo-v2 crop {args.crop}, "
        f"batch {args.batch_size}, shuffle buffer {args.shuffle_buffer}; best of {args.repeats}, alternating"
        f"{' (--quick: a smoke, not figures)' if args.quick else ''}. Machine: {os.cpu_count()} cores, load "
        f"average {start[0]:.1f} at start, {end[0]:.1f} at the end. Peak RSS: benchmark process "
        f"{self_mb:.0f} MB, largest loader worker {kids_mb:.0f} MB.",
        "",
        "| load | workers | source | samples/s | vs local disk | first batch s | requests | MB via proxy "
        "| retries | peak PSS MiB | load avg |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (load, workers, source), m in best.items():
        local = best[(load, workers, "local disk")]["rate"]
        via = f"{m['requests']} | {m['proxy_mb']:.1f}" if "requests" in m else "- | -"
        lines.append(
            f"| {load} | {workers} | {source} | {m['rate']:.0f} | {m['rate'] / local:.2f}x "
            f"| {m['first_batch_s']:.2f} | {via} | {m['retries']} | {m['peak_pss_mb']:.0f} "
            f"| {m['load_avg']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
