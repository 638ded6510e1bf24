"""Benchmark the streaming loader: MoCo pairs per CPU core against the GASSL way of loading, the loader
without augmentation against pure JPEG decode, and RSS over an epoch.

    python -m tests.bench.bench_loader --out bench-out/loader [--locations 48] [--data DIR]

Data: `synth-fmow --realistic-sizes` -> index-fmow -> cluster -> write-shards, i.e. the real pipeline
(stored views: shorter side up to 448 px, JPEG q90). The build is cached in DATA (default OUT/data) and
reused by later runs. The loader repeats the shards for as long as an epoch asks, so a few dozen
locations are enough.

Figures (all single-threaded torch; "per core" = items per CPU-second of every process involved):
  (a) pairs/s/core with full MoCo-v2 augmentation, in-process (num_workers=0) and with 2 workers, against
      a baseline over the same locations that loads as GASSL's temporal dataset did: glob the sibling
      views of the anchor file, pick another at random, open both full-size JPEGs with PIL, Resize(448),
      CenterCrop(448), then torchvision's MoCo-v2 transform on each.
  (b) the loader with augment=False (decode + crop/resize + normalise) against a pure simplejpeg decode
      loop over the chosen views' bytes already in memory: how close the loader gets to decode speed.
  (d) RSS of the loader's process tree (main + workers) at start / middle / end of a long epoch with a
      bounded shuffle buffer: it must stay flat.
CPU time is measured, not only wall time, because the benchmark machine may be shared.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch


def _cpu_times() -> tuple[float, float]:
    """(this process CPU s, reaped children CPU s)."""
    t = os.times()
    return t.user + t.system, t.children_user + t.children_system


# ------------------------------------------------------------------------------------------------ data


def build_data(data: Path, locations: int) -> tuple[Path, Path]:
    """Shards and index from the real pipeline; reused when already there."""
    shards, index = data / "shards", data / "index"
    if (shards / "manifest.parquet").exists() and (index / "images.parquet").exists():
        return shards, index
    from geo_ssl.pipeline.cluster import cluster
    from geo_ssl.pipeline.fmow.index import index_fmow
    from geo_ssl.pipeline.fmow.synth import synth_fmow
    from geo_ssl.pipeline.shards.options import ShardOptions
    from geo_ssl.pipeline.shards.write import write_shards

    workers = min(2, os.cpu_count() or 1)
    t = time.perf_counter()
    synth_fmow(str(data / "fmow"), locations=locations, seed=0, realistic_sizes=True, workers=workers)
    index_fmow(str(data / "fmow"), str(index), workers=workers)
    cluster(str(index), k=8)
    write_shards(str(index), str(shards), options=ShardOptions(workers=workers, shard_bytes=4_000_000))
    print(
        f"built {locations} locations with the real pipeline in {time.perf_counter() - t:.0f} s", flush=True
    )
    return shards, index


# ---------------------------------------------------------------------------------------------- (a)


def measure_loader(shards: Path, augment: bool, num_workers: int, batches: int, batch_size: int) -> dict:
    """Pairs per wall second and per CPU second (main + worker processes)."""
    from geo_ssl.training.data.loader import LoaderConfig, pretrain_loader

    cfg = LoaderConfig(
        urls=str(shards),
        split="train",
        batch_size=batch_size,
        augment=augment,
        num_workers=num_workers,
        shuffle_buffer=100,
        epoch_samples=batch_size * (batches + 1),
    )
    loader = pretrain_loader(cfg)
    it = iter(loader)
    if num_workers == 0:
        next(it)  # the shuffle buffer's first fill is start-up, not steady state
        n_batches = batches
    else:
        n_batches = batches + 1  # worker start-up included: their CPU time is only known at exit
    self0, kids0 = _cpu_times()
    t0 = time.perf_counter()
    pairs = 0
    for q, *_ in it:
        pairs += q.shape[0]
    wall = time.perf_counter() - t0
    del it
    self1, kids1 = _cpu_times()
    cpu = (self1 - self0) + (kids1 - kids0)
    assert pairs == n_batches * batch_size
    return {
        "pairs": pairs,
        "wall_s": wall,
        "cpu_s": cpu,
        "pairs_per_s": pairs / wall,
        "pairs_per_core_s": pairs / cpu,
        "views_decoded": loader.stats.views_decoded,
    }


def gassl_baseline(index: Path, pairs: int, seed: int = 0) -> dict:
    """Load pairs as GASSL's CustomDatasetFromImagesTemporal + MoCo-v2 transform did, from the fMoW tree."""
    from PIL import Image
    from torchvision import transforms as T

    from geo_ssl.pipeline.common.tables import read_table
    from geo_ssl.training.data.augment import torchvision_mocov2

    Image.MAX_IMAGE_PIXELS = None
    rows = read_table(
        str(index / "images.parquet"), "image_index", columns=["split", "image_path"]
    ).to_pylist()
    anchors = [r["image_path"] for r in rows if r["split"] == "train"]
    rng = random.Random(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    transform = T.Compose([T.Resize(448), T.CenterCrop(448), torchvision_mocov2(224)])
    c0 = time.process_time()
    t0 = time.perf_counter()
    for _ in range(pairs):
        anchor = rng.choice(anchors)
        # GASSL globs files sharing the anchor's name minus the temporal index, and the suffix.
        folder, name = os.path.split(anchor)
        prefix = name.rsplit("_", 2)[0]
        others = [p for p in glob.glob(os.path.join(folder, f"{prefix}_*_rgb.jpg")) if p != anchor]
        other = rng.choice(others) if others else anchor
        views = []
        for path in (anchor, other):
            with Image.open(path) as im:
                views.append(transform(im.convert("RGB")))
        torch.stack(views)
    cpu = time.process_time() - c0
    wall = time.perf_counter() - t0
    return {
        "pairs": pairs,
        "wall_s": wall,
        "cpu_s": cpu,
        "pairs_per_s": pairs / wall,
        "pairs_per_core_s": pairs / cpu,
    }


# ---------------------------------------------------------------------------------------------- (b)


def pure_decode(shards: Path, views: int) -> dict:
    """simplejpeg (and Pillow) decode of stored views, bytes already in memory: the loader's ceiling."""
    import simplejpeg
    import webdataset as wds
    from PIL import Image

    blobs: list[bytes] = []
    urls = sorted(str(p) for p in shards.glob("train-*.tar"))
    for s in wds.WebDataset(urls, shardshuffle=False):
        blobs += [v for k, v in s.items() if k.endswith(".jpg")]
    blobs = (blobs * (views // max(1, len(blobs)) + 1))[:views]
    out = {"views": len(blobs), "mean_kb": sum(map(len, blobs)) / len(blobs) / 1024}
    c0 = time.process_time()
    for b in blobs:
        simplejpeg.decode_jpeg(b)
    out["simplejpeg_views_per_core_s"] = len(blobs) / (time.process_time() - c0)
    c0 = time.process_time()
    for b in blobs:
        with Image.open(io.BytesIO(b)) as im:
            im.convert("RGB").load()
    out["pillow_views_per_core_s"] = len(blobs) / (time.process_time() - c0)
    return out


# ---------------------------------------------------------------------------------------------- (d)


def _tree_pss() -> int:
    """Proportional set size of this process and its workers: shared pages (torch libraries, batches in
    shared memory) counted once, unlike a plain RSS sum over forked processes."""
    import psutil

    me = psutil.Process()
    total = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except psutil.Error:
            pass
    return total


def rss_over_epoch(
    shards: Path, batches: int, batch_size: int, num_workers: int, shuffle_buffer: int
) -> dict:
    from geo_ssl.training.data.loader import LoaderConfig, pretrain_loader

    cfg = LoaderConfig(
        urls=str(shards),
        split="train",
        batch_size=batch_size,
        num_workers=num_workers,
        shuffle_buffer=shuffle_buffer,
        epoch_samples=batch_size * batches,
    )
    loader = pretrain_loader(cfg)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_pss())
            time.sleep(0.2)

    marks: dict[str, float] = {}
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for i, _ in enumerate(loader):
            if i == 1:
                marks["start"] = _tree_pss() / 2**20
            elif i == batches // 2:
                marks["middle"] = _tree_pss() / 2**20
            elif i == batches - 1:
                marks["end"] = _tree_pss() / 2**20
    finally:
        stop.set()
        sampler.join()
    marks["peak"] = peak[0] / 2**20
    marks["samples"] = loader.stats.samples
    marks["max_rss_main_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return marks


def rss_in_fresh_process(shards: Path) -> dict:
    """(d) in its own process, so the other measurements' memory does not blur it."""
    cmd = [sys.executable, "-m", "tests.bench.bench_loader", "--out", "-", "--rss-only", str(shards)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", help="cached build folder (default OUT/data)")
    parser.add_argument("--locations", type=int, default=48, help="synthetic locations to build (first run)")
    parser.add_argument("--batches", type=int, default=12, help="batches of 32 pairs per loader measurement")
    parser.add_argument("--baseline-pairs", type=int, default=40)
    parser.add_argument("--rss-only", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("GEO_SSL_PROGRESS", "0")
    torch.set_num_threads(1)
    if args.rss_only:
        print(
            json.dumps(
                rss_over_epoch(
                    Path(args.rss_only), batches=60, batch_size=32, num_workers=2, shuffle_buffer=200
                )
            )
        )
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shards, index = build_data(Path(args.data) if args.data else out / "data", args.locations)
    load = os.getloadavg()

    bs = 32
    ours0 = measure_loader(shards, True, 0, args.batches, bs)
    print("ours in-process:", _fmt(ours0), flush=True)
    ours2 = measure_loader(shards, True, 2, args.batches * 2, bs)
    print("ours 2 workers:", _fmt(ours2), flush=True)
    base = gassl_baseline(index, args.baseline_pairs)
    print("GASSL-style baseline:", _fmt(base), flush=True)
    plain = measure_loader(shards, False, 0, args.batches, bs)
    print("ours augment=False:", _fmt(plain), flush=True)
    decode = pure_decode(shards, 600)
    print("pure decode:", decode, flush=True)
    rss = rss_in_fresh_process(shards)
    print("RSS:", rss, flush=True)

    views_per_pair = plain["views_decoded"] / plain["pairs"] if plain["pairs"] else 2.0
    # Views the loader decodes per CPU-second, against the pure decode loop over the same kind of bytes.
    loader_views_core = plain["pairs_per_core_s"] * views_per_pair
    lines = [
        "# Loader benchmark",
        "",
        f"Data: real pipeline (synth-fmow --realistic-sizes, {args.locations} locations), stored views "
        f"{decode['mean_kb']:.0f} KB on average. Machine: {os.cpu_count()} cores, load average at start "
        f"{load[0]:.1f} (shared machine: per-core figures use CPU time). Batch 32 pairs, 224 px, torch 1 thread.",
        "",
        "| measurement | pairs/s (wall) | pairs/s per core (CPU time) | vs baseline |",
        "|---|---|---|---|",
        f"| (a) GASSL-style baseline (PIL full-size JPEG, Resize 448, CenterCrop 448, torchvision MoCo-v2) "
        f"| {base['pairs_per_s']:.1f} | {base['pairs_per_core_s']:.1f} | 1.0x |",
        f"| (a) ours, MoCo-v2 augmentation, num_workers=0 | {ours0['pairs_per_s']:.1f} "
        f"| {ours0['pairs_per_core_s']:.1f} | {ours0['pairs_per_core_s'] / base['pairs_per_core_s']:.1f}x |",
        f"| (a) ours, MoCo-v2 augmentation, 2 workers (start-up included) | {ours2['pairs_per_s']:.1f} "
        f"| {ours2['pairs_per_core_s']:.1f} | {ours2['pairs_per_core_s'] / base['pairs_per_core_s']:.1f}x |",
        f"| (b) ours, augment=False, num_workers=0 | {plain['pairs_per_s']:.1f} | {plain['pairs_per_core_s']:.1f} "
        f"| {plain['pairs_per_core_s'] / base['pairs_per_core_s']:.1f}x |",
        "",
        "| (b) decode ceiling | views/s per core |",
        "|---|---|",
        f"| pure simplejpeg decode, bytes in memory | {decode['simplejpeg_views_per_core_s']:.0f} |",
        f"| pure Pillow decode, bytes in memory | {decode['pillow_views_per_core_s']:.0f} |",
        f"| loader, augment=False ({views_per_pair:.2f} decoded views per pair) | {loader_views_core:.0f} "
        f"({100 * loader_views_core / decode['simplejpeg_views_per_core_s']:.0f}% of pure decode) |",
        "",
        "| (d) memory (PSS) of main + 2 workers, fresh process, 60 batches, shuffle buffer 200 | MiB |",
        "|---|---|",
        f"| start (batch 1) | {rss['start']:.0f} |",
        f"| middle | {rss['middle']:.0f} |",
        f"| end | {rss['end']:.0f} |",
        f"| peak (sampled every 200 ms) | {rss['peak']:.0f} |",
        f"| main process peak RSS (ru_maxrss) | {rss['max_rss_main_mb']:.0f} |",
        "",
        "Goals: >= 220 pairs/s per core and >= 20x the baseline (a); RSS flat over the epoch (d).",
    ]
    text = "\n".join(lines) + "\n"
    (out / "bench_loader.md").write_text(text)
    print(text)
    return 0


def _fmt(d: dict) -> str:
    return ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())


if __name__ == "__main__":
    sys.exit(main())
