"""Benchmark the streaming loader's CPU path: MoCo pairs per CPU core against the GASSL way of loading,
the loader without augmentation against pure JPEG decode, where a pair's time goes, colour fidelity
against torchvision, and memory over an epoch.

    python -m tests.bench.bench_loader --out bench-out/loader [--rounds 3] [--batches 6] [--data DIR]

Data: `synth-fmow --realistic-sizes` -> index-fmow -> cluster -> write-shards twice from the same index:
"whole" (whole images, shorter side 448: the paper's size, the hard case) and "box" (box crops with
context, shorter side <= 256); and, for the GASSL baseline on box crops, each train view's box + context
cut from its source file at source resolution and saved as `<loc>_<view>_rgb_crop_0.jpg` (GASSL's loader
reads whatever files its CSV lists and has no box logic, so box crops reach it as files; see
BENCHMARKS.md). Cached in DATA (default OUT/data) and reused by later runs.

Every figure is per core, one thread (torch and OpenCV), in-process: items per CPU-second of this
process (the machine may be shared; CPU time, not wall time). The measurements run interleaved, round
after round (baseline, whole, box, augment off, pure decode, ...); each figure is the best of its rounds
(load only slows a measurement down) and each ratio the best of the same-round ratios.
  (a) pairs/s per core with full MoCo-v2 augmentation, as uint8 batches (what geo-pretrain reads and
      normalises on its device) and as float32 batches (the default for direct API use), against one
      epoch of GASSL's loader over the same source images: every train image once as the anchor, its
      temporal partner globbed as GASSL does, each opened with PIL at full size, Resize(448),
      CenterCrop(448), torchvision's MoCo-v2 transform (Pillow blur), twice per pair; on the raw source
      files and on the box-crop files.
  (b) the loader with augment=False (decode + crop/resize, then the uint8 copy or the float normalise)
      against a pure decode loop (simplejpeg, same settings as the loader) over the stored views' bytes
      already in memory.
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
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch


def _cpu_times() -> tuple[float, float]:
    """(this process CPU s, reaped children CPU s); os.times() counts in 10 ms ticks, so this process's
    own time comes from process_time() (ns resolution)."""
    t = os.times()
    return time.process_time(), t.children_user + t.children_system


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
    gassl_box_files(index, data / "gassl-box")
    print(f"data ready in {time.perf_counter() - t:.0f} s", flush=True)
    return {name: out for name, (out, _) in sets.items()}, index


def gassl_box_files(index: Path, out: Path) -> Path:
    """The box crops GASSL's loader would read as files: each train view's box with the fMoW baseline's
    context ("auto", the rule the box shards use), cut from the same source image at its own resolution and
    saved next to its location as `<location>_<view>_rgb_crop_0.jpg` (the 15-character suffix GASSL's
    temporal glob expects), JPEG quality 75 with 4:2:0 chroma like the source files. Made once."""
    from PIL import Image

    from geo_ssl.pipeline.common.tables import read_table
    from geo_ssl.pipeline.fmow.synth import JPEG_QUALITY
    from geo_ssl.pipeline.shards.imageops import crop_region

    done = out / "_done"
    if done.exists():
        return out
    Image.MAX_IMAGE_PIXELS = None
    rows = read_table(str(index / "images.parquet"), "image_index",
                      columns=["split", "image_path", "box"]).to_pylist()  # fmt: skip
    for r in rows:
        if r["split"] != "train":
            continue
        src = Path(r["image_path"])
        dst = out / src.parent.parent.name / src.parent.name / (src.name[: -len(".jpg")] + "_crop_0.jpg")
        dst.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src) as im:
            x, y, w, h = crop_region(r["box"], im.size, "auto")
            im.convert("RGB").crop((x, y, x + w, y + h)).save(
                dst, "JPEG", quality=JPEG_QUALITY, subsampling=2
            )
    done.write_text("ok")
    return out


# ---------------------------------------------------------------------------------------------- (a)


def measure_loader(
    shards: Path,
    augment: bool,
    num_workers: int,
    batches: int,
    batch_size: int,
    decode: str = "cpu",
    output: str = "uint8",
) -> dict:
    """Pairs per wall second and per CPU second (main + worker processes). output="uint8": the 8-bit
    batches geo-pretrain reads (normalised on its device); "float": normalised float32 batches, the
    loader's default for direct API use. decode="defer": the GPU path's CPU side (read, select, shuffle,
    batch the JPEG bytes; nothing decoded)."""
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
        output=output,
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


def gassl_anchors(index: Path, box_files: Path | None = None) -> list[str]:
    """The train images GASSL's CSV would list: the source files, or their pre-cut box crops."""
    from geo_ssl.pipeline.common.tables import read_table

    rows = read_table(
        str(index / "images.parquet"), "image_index", columns=["split", "image_path"]
    ).to_pylist()
    paths = sorted(r["image_path"] for r in rows if r["split"] == "train")
    if box_files is None:
        return paths
    return [
        str(
            box_files / Path(p).parent.parent.name / Path(p).parent.name / (Path(p).name[:-4] + "_crop_0.jpg")
        )
        for p in paths
    ]


def _temporal_partners(anchor: str) -> list[str]:
    """The other views of the anchor's location, found as GASSL's CustomDatasetFromImagesTemporal finds
    them: glob `<folder>/<location>_*<suffix>`. For GASSL's crop names the suffix is the name's last 15
    characters (`_rgb_crop_0.jpg`); raw fMoW names (`_rgb.jpg`, 8 characters) make GASSL's own glob find
    nothing and its .remove() raise, so for them the suffix is `_rgb.jpg` (what copies patched it to)."""
    folder, name = os.path.split(anchor)
    suffix = name[-15:] if name.endswith("_crop_0.jpg") else "_rgb.jpg"
    location = name[: -len(suffix)].rsplit("_", 1)[0]
    return [p for p in glob.glob(os.path.join(folder, f"{location}_*{suffix}")) if p != anchor]


def gassl_baseline(anchors: list[str], seed: int = 0) -> dict:
    """One epoch of GASSL's loader over these files: every image once as the anchor (its CSV rows), the
    partner drawn from its location as GASSL does, each opened with PIL (full size, no reduced decode),
    Resize(448), CenterCrop(448), then the MoCo-v2 transform (Pillow blur), twice per pair."""
    from PIL import Image
    from torchvision import transforms as T

    from geo_ssl.training.data.augment import torchvision_mocov2

    Image.MAX_IMAGE_PIXELS = None
    rng = random.Random(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    order = list(anchors)
    rng.shuffle(order)
    transform = T.Compose([T.Resize(448), T.CenterCrop(448), torchvision_mocov2(224)])
    c0 = time.process_time()
    t0 = time.perf_counter()
    for anchor in order:
        others = _temporal_partners(anchor)
        other = rng.choice(others) if others else anchor
        views = []
        for path in (anchor, other):
            with Image.open(path) as im:
                views.append(transform(im.convert("RGB")))
        torch.stack(views)
    cpu = time.process_time() - c0
    wall = time.perf_counter() - t0
    return {
        "pairs": len(order),
        "wall_s": wall,
        "cpu_s": cpu,
        "pairs_per_s": len(order) / wall,
        "pairs_per_core_s": len(order) / cpu,
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
    """The loader's decoder (same settings: fast IDCT, the reused scratch buffer), full size, bytes in
    memory: the loader's ceiling."""
    from geo_ssl.training.data.decode import decode_rgb, jpeg_size

    blobs = (blobs * (views // max(1, len(blobs)) + 1))[:views]
    c0 = time.process_time()
    for b in blobs:
        w, h = jpeg_size(b)
        decode_rgb(b, 1, w, h, scratch=True)
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
            "normalise into the float32 batch (output=float)",
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
        image = decode_rgb(data, r, w, h, scratch=True)
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
            c = clock()  # the uint8 output needs no stage here: the last op writes into the batch
            A.finish_views(crops, None, out=buffers.get((len(crops), 3, size, size)))
            t["normalise into the float32 batch (output=float)"] += clock() - c
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


def _best(runs: list[dict], key: str) -> float:
    """The least disturbed of the rounds: the machine is shared, load only ever slows a measurement."""
    return float(max(r[key] for r in runs))


def _ratio(ours: list[dict], base: list[dict], key: str = "pairs_per_core_s") -> str:
    """Best of the same-round ratios (both measured within seconds of each other), and all of them."""
    ratios = [a[key] / b[key] for a, b in zip(ours, base, strict=True)]
    return f"**{max(ratios):.1f}x** ({', '.join(f'{x:.1f}' for x in ratios)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", help="cached build folder (default OUT/data)")
    parser.add_argument("--locations", type=int, default=48, help="synthetic locations to build (first run)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures: best round")
    parser.add_argument("--batches", type=int, default=6, help="batches of 32 pairs per loader measurement")
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
    data_dir = Path(args.data) if args.data else out / "data"
    sets, index = build_data(data_dir, args.locations)
    blobs = {name: stored_views(path) for name, path in sets.items()}
    load_start = os.getloadavg()
    t_start = time.perf_counter()

    bs = 32
    runs: dict[str, list[dict]] = {}
    anchors = {"raw": gassl_anchors(index), "box": gassl_anchors(index, data_dir / "gassl-box")}

    def record(name: str, result: dict) -> None:
        result["load"] = os.getloadavg()[0]
        runs.setdefault(name, []).append(result)
        print(f"round {len(runs[name])} {name}:", _fmt(result), flush=True)

    for r in range(args.rounds):
        record("baseline raw", gassl_baseline(anchors["raw"], seed=r))
        for name, path in sets.items():
            for output in ("uint8", "float"):
                record(f"{name} aug {output}", measure_loader(path, True, 0, args.batches, bs, output=output))
                record(
                    f"{name} plain {output}", measure_loader(path, False, 0, args.batches, bs, output=output)
                )
            record(f"{name} decode", pure_decode(blobs[name], 150))
            for output in ("uint8", "float"):  # as geo-pretrain runs: worker processes, start-up included
                w2 = measure_loader(path, True, 2, 2 * args.batches, bs, output=output)
                record(f"{name} aug {output} 2 workers", w2)
        record("baseline box", gassl_baseline(anchors["box"], seed=r))
        record("whole defer", measure_loader(sets["whole"], True, 0, 4 * args.batches, bs, decode="defer"))
    load_end = os.getloadavg()
    wall = time.perf_counter() - t_start
    stages = {name: stage_breakdown(b, 192) for name, b in blobs.items()}
    fidelity = colour_fidelity(blobs["whole"])
    rss = None if args.no_rss else rss_in_fresh_process(sets["whole"])
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    key = "pairs_per_core_s"
    base = {b: _best(runs[f"baseline {b}"], key) for b in ("raw", "box")}
    lines = [
        "# Loader benchmark (CPU path)",
        "",
        f"Data: real pipeline (synth-fmow --realistic-sizes, {args.locations} locations, {len(anchors['raw'])} "
        "train images), two shard sets from the same index and source images. Mean stored view: "
        + ", ".join(f"{n} {sum(map(len, b)) / len(b) / 1024:.0f} KB" for n, b in blobs.items())
        + f". Machine: {os.cpu_count()} cores, load average {load_start[0]:.1f} at start, {load_end[0]:.1f} "
        f"at the end of {args.rounds} interleaved rounds ({wall:.0f} s). Batch 32 pairs, 224 px, in-process, "
        "torch and OpenCV 1 thread; per core = pairs per CPU-second; each figure is the best of its rounds, "
        "each ratio the best of the same-round ratios.",
        "",
        "| (a) measurement | pairs/s per core | vs GASSL on raw files | vs GASSL on box-crop files | rounds |",
        "|---|---:|---:|---:|---|",
        "| GASSL baseline, raw source files (one epoch: PIL full-size decode, Resize 448, CenterCrop 448, "
        f"torchvision MoCo-v2) | {base['raw']:.1f} | 1.0x | - | {_rounds(runs['baseline raw'])} |",
        "| GASSL baseline, box-crop files (the same, on each view's box + context cut from the source file) "
        f"| {base['box']:.1f} | - | 1.0x | {_rounds(runs['baseline box'])} |",
    ]
    for name, label in (("whole", "whole 448 px views"), ("box", "box crops, shorter side <= 256")):
        for output, what in (
            ("uint8", "uint8 batches (what geo-pretrain reads)"),
            ("float", "float32 batches"),
        ):
            runs_ = runs[f"{name} aug {output}"]
            lines.append(
                f"| ours, MoCo-v2, {label}, {what} | **{_best(runs_, key):.1f}** "
                f"| {_ratio(runs_, runs['baseline raw'])} | {_ratio(runs_, runs['baseline box'])} | {_rounds(runs_)} |"
            )
    for name, label in (("whole", "whole 448 px views"), ("box", "box crops")):
        for output in ("uint8", "float"):
            runs_ = runs[f"{name} aug {output} 2 workers"]
            lines.append(
                f"| ours, {label}, {output}, 2 loader worker processes (CPU of all processes, start-up "
                f"included) | {_best(runs_, key):.1f} | {_ratio(runs_, runs['baseline raw'])} "
                f"| {_ratio(runs_, runs['baseline box'])} | {_rounds(runs_)} |"
            )
    lines.append(
        f'| GPU path\'s CPU side (decode="defer": read, select, shuffle, batch JPEG bytes), whole views '
        f"| {_best(runs['whole defer'], key):.0f} | - | - | {_rounds(runs['whole defer'])} |"
    )
    lines += [
        "",
        "| (b) augmentation off vs pure decode | output | loader views/s per core (augment=False) "
        "| pure decode views/s per core | ratio (best round) |",
        "|---|---|---:|---:|---:|",
    ]
    for name in sets:
        dec = runs[f"{name} decode"]
        for output in ("uint8", "float"):
            plain = runs[f"{name} plain {output}"]
            views = [r[key] * r["views_per_pair"] for r in plain]
            ratios = [v / d["views_per_core_s"] for v, d in zip(views, dec, strict=True)]
            lines.append(
                f"| {name} | {output} | {max(views):.0f} | {_best(dec, 'views_per_core_s'):.0f} "
                f"| **{100 * max(ratios):.0f}%** ({', '.join(f'{100 * x:.0f}' for x in ratios)}) |"
            )
    lines += [
        "",
        "| (c) CPU ms per view, each stage timed alone | " + " | ".join(sets) + " |",
        "|---|" + "---:|" * len(sets),
    ]
    for stage in stages["whole"]:
        lines.append(f"| {stage} | " + " | ".join(f"{stages[n][stage]:.3f}" for n in sets) + " |")
    float_stage = "normalise into the float32 batch (output=float)"
    lines.append(
        "| sum of stages, uint8 output | "
        + " | ".join(f"{sum(v for k, v in stages[n].items() if k != float_stage):.3f}" for n in sets)
        + " |"
    )
    lines.append(
        "| whole loader per view, uint8 output (1 / (2 x pairs/s per core), best round) | "
        + " | ".join(f"{1e3 / (2 * _best(runs[n + ' aug uint8'], key)):.3f}" for n in sets)
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
        "the baseline; augmentation off >= 80% of pure decode; every colour op within 2 levels. Load average "
        "at each measurement: bench_loader.json (runs[...][i].load).",
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
