"""Benchmark the streaming loader's CPU path: MoCo pairs per CPU core against the GASSL way of loading,
the loader without augmentation against pure JPEG decode, where a pair's time goes, colour fidelity
against torchvision, and memory over an epoch.

    python -m tests.bench.bench_loader --out bench-out/loader [--rounds 3] [--batches 6] [--data DIR]

Data: `synth-fmow --realistic-sizes` -> index-fmow -> cluster -> write-shards twice from the same index:
"whole" (whole images, shorter side 448: the paper's size, the hard case) and "box" (box crops with
context, shorter side <= 256). Cached in DATA (default OUT/data) and reused by later runs.

Every figure is per core, one thread (torch and OpenCV), in-process: items per CPU-second of this
process (the machine may be shared; CPU time, not wall time). The measurements run interleaved, round
after round (baseline, whole, box, augment off, pure decode, ...), and each figure is the median over
rounds, so a change of machine load hits all of them alike.
  (a) pairs/s per core with full MoCo-v2 augmentation against a baseline over the same source images
      that loads as GASSL did: open the full-size JPEG with PIL, Resize(448), CenterCrop(448), then
      torchvision's MoCo-v2 transform (Pillow blur), twice per pair.
  (b) the loader with augment=False (decode + crop/resize + normalise) against a pure decode loop
      (simplejpeg, same settings as the loader) over the stored views' bytes already in memory.
  (c) where a pair's time goes: each stage of the CPU path timed alone on the same views.
  (e) colour fidelity: mean absolute difference (levels of 255) of each jitter op against
      torchvision.transforms.v2.functional on the same factors, over fixed stored views.
  (d) PSS of the loader's process tree (main + 2 workers) at start / middle / end of a long epoch.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch


def _cpu_times() -> tuple[float, float]:
    """(this process CPU s, reaped children CPU s)."""
    t = os.times()
    return t.user + t.system, t.children_user + t.children_system


# ------------------------------------------------------------------------------------------------ data


def build_data(data: Path, locations: int) -> tuple[dict[str, Path], Path]:
    """Two shard sets from the same source images and index, reused when already there:
    "whole" = whole images, shorter side 448 (the paper's size, the hard case);
    "box" = box crops with context, shorter side <= 256."""
    index = data / "index"
    sets = {"whole": (data / "shards-whole", {"resize": 448, "context": None}),
            "box": (data / "shards-box", {"resize": 256, "context": "auto"})}  # fmt: skip
    from geo_ssl.pipeline.cluster import cluster
    from geo_ssl.pipeline.fmow.index import index_fmow
    from geo_ssl.pipeline.fmow.synth import synth_fmow
    from geo_ssl.pipeline.shards.options import ShardOptions
    from geo_ssl.pipeline.shards.write import write_shards

    workers = min(2, os.cpu_count() or 1)
    t = time.perf_counter()
    if not (index / "images.parquet").exists():
        synth_fmow(str(data / "fmow"), locations=locations, seed=0, realistic_sizes=True, workers=workers)
        index_fmow(str(data / "fmow"), str(index), workers=workers)
        cluster(str(index), k=8)
    for out, opts in sets.values():
        if not (out / "manifest.parquet").exists():
            write_shards(
                str(index), str(out), options=ShardOptions(workers=workers, shard_bytes=4_000_000, **opts)
            )
    print(f"data ready in {time.perf_counter() - t:.0f} s", flush=True)
    return {name: out for name, (out, _) in sets.items()}, index


# ---------------------------------------------------------------------------------------------- (a)


def measure_loader(
    shards: Path, augment: bool, num_workers: int, batches: int, batch_size: int, decode: str = "cpu"
) -> dict:
    """Pairs per wall second and per CPU second (main + worker processes). decode="defer": the GPU
    path's CPU side (read, select, shuffle, batch the JPEG bytes; nothing decoded)."""
    from geo_ssl.training.data.loader import LoaderConfig, pretrain_loader

    cfg = LoaderConfig(
        urls=str(shards),
        split="train",
        batch_size=batch_size,
        augment=augment,
        num_workers=num_workers,
        shuffle_buffer=100,
        epoch_samples=batch_size * (batches + 1),
        decode=decode,
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
    for batch in it:
        pairs += len(batch["key"])
        del batch
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
        "views_per_pair": loader.stats.views_decoded / max(1, loader.stats.samples),
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


def stored_views(shards: Path) -> list[bytes]:
    """The stored views' JPEG bytes of the train shards, in shard order."""
    import webdataset as wds

    blobs: list[bytes] = []
    urls = sorted(str(p) for p in shards.glob("train-*.tar"))
    for s in wds.WebDataset(urls, shardshuffle=False):
        blobs += [v for k, v in s.items() if k.endswith(".jpg")]
    return blobs


def pure_decode(blobs: list[bytes], views: int) -> dict:
    """The loader's decoder (same settings), full size, bytes in memory: the loader's ceiling."""
    from geo_ssl.training.data.decode import decode_rgb

    blobs = (blobs * (views // max(1, len(blobs)) + 1))[:views]
    c0 = time.process_time()
    for b in blobs:
        decode_rgb(b)
    return {"views": len(blobs), "views_per_core_s": len(blobs) / (time.process_time() - c0)}


# ---------------------------------------------------------------------------------------------- (c)


def stage_breakdown(blobs: list[bytes], views: int, size: int = 224, seed: int = 0) -> dict:
    """CPU ms per view of each stage of the augmented path, timed alone (same ops as augment_crop)."""
    import cv2

    from geo_ssl.training.data import augment as A
    from geo_ssl.training.data.decode import crop_resize, dct_reduction, decode_rgb, jpeg_size

    rng = random.Random(seed)
    aug = A.MocoV2Augment(image_size=size)
    t = dict.fromkeys(
        (
            "header + params",
            "decode",
            "crop + resize",
            "colour jitter",
            "grayscale",
            "blur",
            "flip",
            "normalise",
        ),
        0.0,
    )
    buffers = A.BatchBuffers()
    crops = []
    clock = time.process_time
    for i in range(views):
        data = blobs[i % len(blobs)]
        c = clock()
        w, h = jpeg_size(data)
        p = aug.sample(rng, w, h)
        c1 = clock()
        r = dct_reduction([p.box], size)
        image = decode_rgb(data, r, w, h)
        c2 = clock()
        crop = crop_resize(image, p.box, size, image.shape[1] / w, image.shape[0] / h)
        img = np.ascontiguousarray(crop.permute(1, 2, 0).numpy())
        c3 = clock()
        for op, f in p.jitter:
            img = A._ADJUST[op](img, f)
        c4 = clock()
        if p.gray:
            img = A.grayscale(img)
        c5 = clock()
        if p.blur_sigma > 0:
            img = A.gaussian_blur(img, p.blur_sigma)
        c6 = clock()
        if p.flip:
            img = cv2.flip(img, 1)
        c7 = clock()
        for k, dt in zip(t, (c1 - c, c2 - c1, c3 - c2, c4 - c3, c5 - c4, c6 - c5, c7 - c6), strict=False):
            t[k] += dt
        crops.append(torch.from_numpy(img).permute(2, 0, 1))
        if len(crops) == 64 or i == views - 1:
            c = clock()
            A.finish_views(crops, None, out=buffers.get((len(crops), 3, size, size)))
            t["normalise"] += clock() - c
            crops = []
    return {k: 1e3 * v / views for k, v in t.items()}


# ---------------------------------------------------------------------------------------------- (e)


def colour_fidelity(blobs: list[bytes], n_views: int = 12, size: int = 224) -> dict:
    """Mean |ours - torchvision v2| in levels per op (worst factor), CPU path and GPU-style path."""
    import torchvision.transforms.v2.functional as TF

    from geo_ssl.training.data.augment import ViewParams, augment_crop
    from geo_ssl.training.data.decode import center_box, decode_crops, jpeg_size
    from geo_ssl.training.data.gpu_augment import color_jitter

    crops = []
    for data in blobs[:n_views]:
        w, h = jpeg_size(data)
        crops.append(decode_crops(data, [center_box(w, h)], size, w, h)[0].contiguous())
    grid = {
        "brightness": (0.6, 0.8, 1.2, 1.4),
        "contrast": (0.6, 0.8, 1.2, 1.4),
        "saturation": (0.6, 0.8, 1.2, 1.4),
        "hue": (-0.1, -0.05, 0.05, 0.1),
    }
    ops = ("brightness", "contrast", "saturation", "hue")
    out = {}
    for op, factors in grid.items():
        cpu_worst = gpu_worst = 0.0
        for f in factors:
            cpu_d, gpu_d = [], []
            x = torch.stack(crops).float() / 255.0
            fac = torch.tensor([[1.0, 1.0, 1.0, 0.0]] * len(crops))
            fac[:, ops.index(op)] = f
            order = torch.full((len(crops), 4), -1)
            order[:, 0] = ops.index(op)
            gpu = color_jitter(x, fac, order) * 255.0
            for i, crop in enumerate(crops):
                ref = getattr(TF, f"adjust_{op}")(crop, f).float()
                ours = augment_crop(crop, ViewParams(box=(0, 0, 1, 1), jitter=((op, f),))).float()
                cpu_d.append(float((ours - ref).abs().mean()))
                gpu_d.append(float((gpu[i] - ref).abs().mean()))
            cpu_worst, gpu_worst = (
                max(cpu_worst, float(np.mean(cpu_d))),
                max(gpu_worst, float(np.mean(gpu_d))),
            )
        out[op] = {"cpu": cpu_worst, "gpu_style": gpu_worst}
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


def _median(runs: list[dict], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", help="cached build folder (default OUT/data)")
    parser.add_argument("--locations", type=int, default=48, help="synthetic locations to build (first run)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians")
    parser.add_argument("--batches", type=int, default=6, help="batches of 32 pairs per loader measurement")
    parser.add_argument("--baseline-pairs", type=int, default=24, help="baseline pairs per round")
    parser.add_argument("--no-rss", action="store_true", help="skip (d), the 2-worker memory run")
    parser.add_argument("--rss-only", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("GEO_SSL_PROGRESS", "0")
    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)
    if args.rss_only:
        print(
            json.dumps(
                rss_over_epoch(
                    Path(args.rss_only), batches=40, batch_size=32, num_workers=2, shuffle_buffer=200
                )
            )
        )
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets, index = build_data(Path(args.data) if args.data else out / "data", args.locations)
    blobs = {name: stored_views(path) for name, path in sets.items()}
    load_start = os.getloadavg()
    t_start = time.perf_counter()

    bs = 32
    runs: dict[str, list[dict]] = {}

    def record(name: str, result: dict) -> None:
        runs.setdefault(name, []).append(result)
        print(f"round {len(runs[name])} {name}:", _fmt(result), flush=True)

    for r in range(args.rounds):
        record("baseline", gassl_baseline(index, args.baseline_pairs, seed=r))
        for name, path in sets.items():
            record(f"{name} aug", measure_loader(path, True, 0, args.batches, bs))
            record(f"{name} plain", measure_loader(path, False, 0, args.batches, bs))
            record(f"{name} decode", pure_decode(blobs[name], 150))
        record("whole defer", measure_loader(sets["whole"], True, 0, 4 * args.batches, bs, decode="defer"))
    load_end = os.getloadavg()
    wall = time.perf_counter() - t_start
    stages = {name: stage_breakdown(b, 192) for name, b in blobs.items()}
    fidelity = colour_fidelity(blobs["whole"])
    rss = None if args.no_rss else rss_in_fresh_process(sets["whole"])
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    base = _median(runs["baseline"], "pairs_per_core_s")
    lines = [
        "# Loader benchmark (CPU path)",
        "",
        f"Data: real pipeline (synth-fmow --realistic-sizes, {args.locations} locations), two shard sets "
        "from the same index and source images. Mean stored view: "
        + ", ".join(f"{n} {sum(map(len, b)) / len(b) / 1024:.0f} KB" for n, b in blobs.items())
        + f". Machine: {os.cpu_count()} cores, load average {load_start[0]:.1f} at start, {load_end[0]:.1f} "
        f"at the end of {args.rounds} interleaved rounds ({wall:.0f} s). Batch 32 pairs, 224 px, in-process, "
        "torch and OpenCV 1 thread; per core = pairs per CPU-second, median over rounds.",
        "",
        "| (a) measurement | pairs/s per core | vs baseline | rounds (pairs/s per core) |",
        "|---|---:|---:|---|",
        f"| GASSL-style baseline (PIL full-size source JPEG, Resize 448, CenterCrop 448, torchvision MoCo-v2) "
        f"| {base:.1f} | 1.0x | {_rounds(runs['baseline'])} |",
    ]
    for name, label in (("whole", "whole 448 px views"), ("box", "box crops, shorter side <= 256")):
        v = _median(runs[f"{name} aug"], "pairs_per_core_s")
        lines.append(
            f"| ours, MoCo-v2 augmentation, {label} | **{v:.1f}** | **{v / base:.1f}x** | {_rounds(runs[name + ' aug'])} |"
        )
    defer = _median(runs["whole defer"], "pairs_per_core_s")
    lines.append(
        f'| GPU path\'s CPU side (decode="defer": read, select, shuffle, batch JPEG bytes), whole views '
        f"| {defer:.0f} | - | {_rounds(runs['whole defer'])} |"
    )
    lines += [
        "",
        "| (b) augmentation off vs pure decode | loader views/s per core (augment=False) | pure decode views/s per core | ratio |",
        "|---|---:|---:|---:|",
    ]
    for name in sets:
        plain = _median(runs[f"{name} plain"], "pairs_per_core_s") * statistics.median(
            r["views_per_pair"] for r in runs[f"{name} plain"]
        )
        dec = _median(runs[f"{name} decode"], "views_per_core_s")
        lines.append(f"| {name} | {plain:.0f} | {dec:.0f} | **{100 * plain / dec:.0f}%** |")
    lines += [
        "",
        "| (c) CPU ms per view, each stage timed alone | " + " | ".join(sets) + " |",
        "|---|" + "---:|" * len(sets),
    ]
    for stage in stages["whole"]:
        lines.append(f"| {stage} | " + " | ".join(f"{stages[n][stage]:.3f}" for n in sets) + " |")
    lines.append("| sum of stages | " + " | ".join(f"{sum(stages[n].values()):.3f}" for n in sets) + " |")
    lines.append(
        "| whole loader per view (1 / (2 x pairs/s per core)) | "
        + " | ".join(f"{1e3 / (2 * _median(runs[n + ' aug'], 'pairs_per_core_s')):.3f}" for n in sets)
        + " |"
    )
    lines += [
        "",
        "| (e) colour fidelity: mean abs difference to torchvision v2 (levels of 255, worst factor) | CPU path | GPU-style path |",
        "|---|---:|---:|",
    ]
    for op, d in fidelity.items():
        lines.append(f"| {op} | {d['cpu']:.2f} | {d['gpu_style']:.2f} |")
    lines += ["", f"Peak RSS of the benchmark process (ru_maxrss): {peak_rss_mb:.0f} MB."]
    if rss:
        lines += [
            f"(d) PSS of main + 2 workers over 40 batches (whole views, shuffle buffer 200): start {rss['start']:.0f} MiB, "
            f"middle {rss['middle']:.0f}, end {rss['end']:.0f}, peak {rss['peak']:.0f}; main process peak RSS "
            f"{rss['max_rss_main_mb']:.0f} MB.",
        ]
    lines += [
        "",
        "Goals (issue 11): whole views >= 180 pairs/s per core; box crops >= 300 pairs/s per core and >= 25x "
        "the baseline; augmentation off >= 80% of pure decode; every colour op within 2 levels.",
    ]
    text = "\n".join(lines) + "\n"
    (out / "bench_loader.md").write_text(text)
    (out / "bench_loader.json").write_text(
        json.dumps({"runs": runs, "stages": stages, "fidelity": fidelity, "rss": rss}, indent=1)
    )
    print(text)
    return 0


def _rounds(runs: list[dict]) -> str:
    key = "pairs_per_core_s"
    return ", ".join(f"{r[key]:.0f}" for r in runs)


def _fmt(d: dict) -> str:
    return ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())


if __name__ == "__main__":
    sys.exit(main())
