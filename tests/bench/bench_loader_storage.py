"""Benchmark the loader's storage path: the same shards from local disk, from an S3 server on loopback
(moto's server mode), and from S3 through the local shard cache (cold: the first epoch fills it; warm).

    python -m tests.bench.bench_loader_storage --out bench-out/loader_storage

The loader runs with decode="defer" (read, group, parse json, choose views, shuffle, batch: everything
but JPEG decode and augmentation), 0 workers, so the figures are the storage path alone per core. The S3
server runs in the same process (a thread) and shares its core: the S3 rates are a lower bound for a
server elsewhere. Variants alternate, best of --repeats. Peak RSS is the benchmark process's.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import time
from pathlib import Path

from geo_ssl.training.data.loader import LoaderConfig, pretrain_loader
from tests.s3_support import bucket_fs, moto_server
from tests.shard_fixtures import make_tiny_shards


def _epoch(cfg: LoaderConfig) -> dict:
    """One epoch: samples/s from the first request for data on (the loader built: shards listed, counts
    read), and the time to the first batch from before the loader is built (listing and manifest reads,
    first shard bytes, the shuffle buffer's first fill: what a store's latency costs at start-up)."""
    t_build = time.perf_counter()
    loader = pretrain_loader(cfg)
    t0 = time.perf_counter()
    n, first = 0, None
    for batch in loader:
        n += len(batch["key"])
        if first is None:
            first = time.perf_counter() - t_build
    wall = time.perf_counter() - t0
    return {
        "samples": n,
        "wall_s": wall,
        "rate": n / wall,
        "first_batch_s": first,
        "retries": loader.stats.retries,
    }


def shard_folder(work: Path, locations: int, shards: int, image_size: int) -> tuple[Path, int]:
    """WORK/shards: tiny shards (tests.shard_fixtures) made on the first run and reused after; returns the
    folder and the bytes of its shards."""
    data = work / "shards"
    if not (data / "manifest.parquet").exists():
        make_tiny_shards(data, n_locations=locations, n_shards=shards, image_size=image_size)
    return data, sum(f.stat().st_size for f in data.glob("*.tar"))


def upload(endpoint: str, data: Path, prefix: str) -> str:
    """Every file of `data` put under s3://`prefix` on the server at `endpoint`; returns that URL."""
    fs = bucket_fs(endpoint)
    for f in sorted(data.iterdir()):
        fs.put_file(str(f), f"{prefix}/{f.name}")
    return f"s3://{prefix}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--locations", type=int, default=600)
    p.add_argument("--shards", type=int, default=6)
    p.add_argument("--image-size", type=int, default=192, help="shorter side of the stored views")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)

    work = Path(args.out).resolve()
    data, shard_bytes = shard_folder(work, args.locations, args.shards, args.image_size)
    with moto_server("bench") as endpoint:
        options = {"client_kwargs": {"endpoint_url": endpoint}}
        upload(endpoint, data, "bench/shards")
        base = dict(
            split="train", batch_size=32, image_size=64, num_workers=0, shuffle_buffer=1000, decode="defer"
        )
        cache = work / "cache"
        variants = {
            "local disk": lambda: LoaderConfig(str(data), **base),
            "S3, no cache": lambda: LoaderConfig("s3://bench/shards", storage_options=options, **base),
            "S3, cache cold": lambda: (
                shutil.rmtree(cache, ignore_errors=True),
                LoaderConfig("s3://bench/shards", storage_options=options, cache_dir=str(cache), **base),
            )[1],
            "S3, cache warm": lambda: LoaderConfig(
                "s3://bench/shards", storage_options=options, cache_dir=str(cache), **base
            ),
        }
        results: dict[str, list[dict]] = {name: [] for name in variants}
        _epoch(variants["local disk"]())  # warm the page cache and imports
        for r in range(args.repeats):
            for name, make in variants.items():
                m = _epoch(make())
                results[name].append(m)
                print(f"{name} run {r}: {m['rate']:.0f} samples/s", flush=True)
    best = {name: max(ms, key=lambda m: m["rate"]) for name, ms in results.items()}
    local = best["local disk"]["rate"]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mb = shard_bytes / 2**20
    lines = [
        f"Loader storage path (decode deferred, 0 workers, 1 process incl. the S3 server thread): "
        f"{args.locations} locations in {args.shards} shards, {mb:.1f} MB, views of shorter side "
        f"{args.image_size}; best of {args.repeats}, alternating; load average "
        f"{os.getloadavg()[0]:.1f}; peak RSS {rss:.0f} MB.",
        "",
        "| source | samples/s | MB/s | vs local disk |",
        "|---|---|---|---|",
    ]
    for name, m in best.items():
        mbs = mb * m["rate"] / m["samples"]
        lines.append(f"| {name} | {m['rate']:.0f} | {mbs:.1f} | {m['rate'] / local:.2f}x |")
    text = "\n".join(lines) + "\n"
    work.mkdir(parents=True, exist_ok=True)
    (work / "loader_storage.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
