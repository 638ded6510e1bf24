"""The CPU loader's MoCo-v2 pairs per core on two mixes of whole 448 px views, interleaved in one run:
the benchmark's own mix (bench_loader's `synth-fmow --realistic-sizes`, seed 0) and a held-out mix whose
source image sizes are drawn from the real fMoW-rgb val sample listing (../shared/data).

    python -m tests.bench.bench_loader_mix --out bench-out/loader-mix [--rounds 5] [--batches 6]

The held-out mix: `synth-fmow --realistic-sizes` with another seed (other locations; views per location
drawn from the real distribution), each rgb view rendered at a pixel count drawn (seeded) from the
listing's `_rgb.jpg` sizes at 0.277 bytes per pixel (the synthetic sources' own figure at quality 75,
4:2:0; the real airport_0_0_msrgb.jpg has 0.27), aspect kept, covering more or less ground at the same
gsd as a larger or smaller real scene does (long side capped at 6000 px, synth-fmow's own cap: stored
views are 448 px on the shorter side either way); then index-fmow and write-shards whole views at 448
px, as bench_loader does. Skipped, with the reason, when ../shared/data has no listing.

Reported per mix: pairs per CPU-second (uint8 batches, in-process, torch and OpenCV 1 thread, batch 32,
as bench_loader's table (a)), median and range over the rounds and the same-round ratio; what each mix's
stored views are (pixels, bytes per pixel, shorter side < 448, single-view locations, views decoded per
pair); and CPU ms per view of each stage (bench_loader.stage_breakdown) on both. `--band-ablation`
also runs every mix with row-band decoding off (decode.row_band: whole-image decodes, as before it), in
the same rounds. Shards cached by an older write-shards have no restart markers: delete them to rebuild.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

LISTING = Path(__file__).resolve().parents[3] / "shared" / "data" / "fmow-rgb-val-sample-listing.csv"
MAX_SIDE = 6000
#: Bytes per pixel of synth-fmow's realistic-size sources (quality 75, 4:2:0), measured over bench_loader's
#: 48 locations; the one real fMoW JPEG in ../shared/data (airport_0_0_msrgb.jpg) has 0.27.
SOURCE_BYTES_PER_PX = 0.277


def listing_sizes(listing: Path) -> np.ndarray:
    """File sizes (bytes) of every `_rgb.jpg` in the real val sample listing."""
    with listing.open(newline="") as fh:
        return np.array([int(r["bytes"]) for r in csv.DictReader(fh) if r["path"].endswith("_rgb.jpg")])


def _scaled_meta(meta: dict, width: int, height: int) -> dict:
    """A view's JSON for the image resized to width x height: its size and every box scaled."""
    fx, fy = width / meta["img_width"], height / meta["img_height"]
    meta = json.loads(json.dumps(meta))
    meta["img_width"], meta["img_height"] = width, height
    boxes = meta["bounding_boxes"]
    for entry in [boxes] if isinstance(boxes, dict) else boxes:
        x, y, w, h = entry["box"]
        x0, y0 = min(width - 1, int(x * fx)), min(height - 1, int(y * fy))
        entry["box"] = [
            x0,
            y0,
            max(1, min(width - x0, round(w * fx))),
            max(1, min(height - y0, round(h * fy))),
        ]
    return meta


@contextlib.contextmanager
def listing_sizes_in_synth(sizes: np.ndarray, seed: int) -> Iterator[None]:
    """While active, synth-fmow (run in this process) renders each rgb view at a pixel count drawn from
    `sizes` (bytes) at SOURCE_BYTES_PER_PX, aspect kept, covering more or less ground at the same gsd
    (as a larger real scene does), the object box scaled with the frame; long side capped at MAX_SIDE."""
    from geo_ssl.pipeline.fmow import synth

    original = synth._view_specs
    rng = np.random.default_rng(seed)

    def specs(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for spec in original(*args, **kwargs):
            f = spec.frame
            k = (float(rng.choice(sizes)) / SOURCE_BYTES_PER_PX / (f.width * f.height)) ** 0.5
            k = min(k, MAX_SIDE / max(f.width, f.height))
            w, h = max(16, round(f.width * k)), max(16, round(f.height * k))
            x, y, bw, bh = f.box
            box = (int(x * w / f.width), int(y * h / f.height), max(4, round(bw * w / f.width)),
                   max(4, round(bh * h / f.height)))  # fmt: skip
            ms = (max(8, round(w / 4)), max(8, round(h / 4)))
            yield dataclasses.replace(
                spec,
                frame=dataclasses.replace(f, width=w, height=h, box=box),
                ms_size=ms,
                rgb_meta=_scaled_meta(spec.rgb_meta, w, h),
                msrgb_meta=_scaled_meta(spec.msrgb_meta, *ms),
            )

    synth._view_specs = specs
    try:
        yield
    finally:
        synth._view_specs = original


def build_listing_mix(data: Path, locations: int, seed: int, listing: Path) -> Path:
    """Whole-view shards of the held-out mix (reused when already built)."""
    from geo_ssl.pipeline.cluster import cluster
    from geo_ssl.pipeline.fmow.index import index_fmow
    from geo_ssl.pipeline.fmow.synth import synth_fmow
    from geo_ssl.pipeline.shards.options import ShardOptions
    from geo_ssl.pipeline.shards.write import write_shards

    shards, index = data / "shards-whole", data / "index"
    if (shards / "manifest.parquet").exists():
        return shards
    workers = min(2, os.cpu_count() or 1)
    with listing_sizes_in_synth(listing_sizes(listing), seed):  # in this process: workers=1
        synth_fmow(str(data / "fmow"), locations=locations, seed=seed, realistic_sizes=True, workers=1)
    index_fmow(str(data / "fmow"), str(index), workers=workers)
    cluster(str(index), k=8)
    write_shards(
        str(index),
        str(shards),
        options=ShardOptions(workers=workers, shard_bytes=4_000_000, resize=448, context=None),
    )
    return shards


def describe(shards: Path) -> dict:
    """What the loader decodes: the stored train views' sizes and bytes, and the locations' view counts."""
    import webdataset as wds

    from geo_ssl.training.data.decode import jpeg_size

    sides, nbytes, per_loc = [], [], []
    urls = sorted(str(p) for p in shards.glob("train-*.tar"))
    for s in wds.WebDataset(urls, shardshuffle=False):
        views = [v for k, v in s.items() if k.endswith(".jpg")]
        per_loc.append(len(views))
        sides += [jpeg_size(v) for v in views]
        nbytes += [len(v) for v in views]
    px = np.array([w * h for w, h in sides], dtype=np.float64)
    return {
        "locations": len(per_loc),
        "views": len(sides),
        "single_view_locations": float(np.mean(np.array(per_loc) == 1)),
        "mean_kpx": float(px.mean() / 1e3),
        "bytes_per_px": float(sum(nbytes) / px.sum()),
        "short_below_448": float(np.mean([min(w, h) < 448 for w, h in sides])),
        "mean_long_over_short": float(np.mean([max(w, h) / min(w, h) for w, h in sides])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", help="cached build folder (default OUT/data)")
    parser.add_argument(
        "--synth-data", help="bench_loader's cached data folder to reuse (default DATA/synth)"
    )
    parser.add_argument("--locations", type=int, default=48)
    parser.add_argument("--seed", type=int, default=1, help="held-out mix seed (bench_loader uses 0)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=6, help="batches of 32 pairs per measurement")
    parser.add_argument("--listing", default=str(LISTING))
    parser.add_argument(
        "--band-ablation", action="store_true", help="also run each mix with row-band decoding off"
    )
    args = parser.parse_args(argv)
    listing = Path(args.listing)
    if not listing.exists():
        print(f"skipped: {listing} is absent (the real fMoW val listing lives in ../shared/data)")
        return 0
    os.environ.setdefault("GEO_SSL_PROGRESS", "0")
    import cv2
    import torch

    from tests.bench.bench_loader import build_data, measure_loader, stage_breakdown, stored_views

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else out / "data"
    synth_sets, _ = build_data(Path(args.synth_data) if args.synth_data else data / "synth", args.locations)
    mixes = {
        "bench_loader mix (seed 0)": synth_sets["whole"],
        f"listing mix (seed {args.seed})": build_listing_mix(
            data / "listing", args.locations, args.seed, listing
        ),
    }
    load0, t0 = os.getloadavg(), time.perf_counter()
    modes = ("whole decode", "row bands") if args.band_ablation else ("row bands",)
    runs: dict[str, list[dict]] = {}
    for r in range(args.rounds):
        for name, shards in mixes.items():
            for mode in modes:
                with _bands(mode == "row bands"):
                    m = measure_loader(shards, True, 0, args.batches, 32, output="uint8")
                m["load"] = os.getloadavg()[0]
                runs.setdefault(f"{name}, {mode}", []).append(m)
                print(
                    f"round {r + 1} {name}, {mode}: {m['pairs_per_core_s']:.1f} pairs/s per core", flush=True
                )
    load1 = os.getloadavg()
    key = "pairs_per_core_s"
    result = {
        "load": [load0[0], load1[0]],
        "wall_s": time.perf_counter() - t0,
        "runs": runs,
        "mixes": {name: describe(p) for name, p in mixes.items()},
        "stages_ms_per_view": {name: stage_breakdown(stored_views(p), 192) for name, p in mixes.items()},
    }
    (out / "bench_loader_mix.json").write_text(json.dumps(result, indent=1))
    lines = [
        f"Load average {load0[0]:.1f} -> {load1[0]:.1f}, {args.rounds} interleaved rounds, "
        f"{result['wall_s']:.0f} s. Whole 448 px views, MoCo-v2, uint8 batches of 32 pairs, in-process, "
        "torch and OpenCV 1 thread; per core = pairs per CPU-second.",
        "",
        "| mix, decode | pairs/s per core, median (range) | views decoded per pair | stored view kpx "
        "| bytes/px | shorter side < 448 | single-view locations |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, rs in runs.items():
        d = result["mixes"][label.rsplit(", ", 1)[0]]
        v = [m[key] for m in rs]
        lines.append(
            f"| {label} | {statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f}) | {rs[0]['views_per_pair']:.2f} "
            f"| {d['mean_kpx']:.0f} | {d['bytes_per_px']:.2f} | {100 * d['short_below_448']:.0f}% "
            f"| {100 * d['single_view_locations']:.0f}% |"
        )
    labels = list(runs)
    pairs = [(labels[i], labels[j]) for i in range(len(labels)) for j in range(i + 1, len(labels))]
    lines += ["", "Same-round ratios, median (range):"]
    for a, b in pairs:
        ratios = [y[key] / x[key] for x, y in zip(runs[a], runs[b], strict=True)]
        lines.append(f"- {b} / {a}: {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
    stages = result["stages_ms_per_view"]
    lines += ["", "| CPU ms per view, each stage alone (whole decode) | " + " | ".join(mixes) + " |"]
    lines.append("|---|" + "---:|" * len(mixes))
    for stage in next(iter(stages.values())):
        lines.append(f"| {stage} | " + " | ".join(f"{stages[n][stage]:.3f}" for n in mixes) + " |")
    text = "\n".join(lines) + "\n"
    (out / "bench_loader_mix.md").write_text(text)
    print(text)
    return 0


@contextlib.contextmanager
def _bands(on: bool) -> Iterator[None]:
    """Row-band decoding on (the loader's default) or off (every view decoded whole, as before it)."""
    from geo_ssl.training.data import decode

    original = decode.row_band
    if not on:
        decode.row_band = lambda data, y0, y1: None
    try:
        yield
    finally:
        decode.row_band = original


if __name__ == "__main__":
    sys.exit(main())
