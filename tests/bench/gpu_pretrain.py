"""A GPU run under 10 minutes: ResNet-50 moco+geo+tp with AMP on realistic-size synthetic fMoW shards.

    python -m tests.bench.gpu_pretrain --out bench-out/gpu-pretrain [--locations 500 --steps 600]

1. synth-fmow --realistic-sizes (multi-megapixel views at fMoW's byte sizes), index-fmow, cluster,
   write-shards at 448 px: the real pipeline, all CPU cores.
2. pretrain in this process from the `gassl-fmow-moco-geo-tp` preset (ResNet-50, T 0.02, GASSL's +TP crop
   and image epoch, AMP bf16 or fp16, channels_last, the GPU data path when present), with what a few
   hundred locations need instead of the paper's data: batch --batch-size, K = 1024, lr 0.03 x batch/256,
   epochs so that the cosine schedule ends at --steps. A timer stops it by SIGTERM (checkpoint, clean exit)
   when the time budget runs out first.
3. reports steps/s (median over the logged windows after warm-up, and steps / wall), samples/s, the share
   of time waiting on data, peak GPU memory (allocated and reserved), and the frozen kNN / linear-probe
   top-1 on the val split's categories of the checkpoint next to a random-init ResNet-50.

Writes OUT/gpu_pretrain.md and OUT/gpu_pretrain.json. Without CUDA it says so, runs a tiny CPU smoke run
of the same code path (ResNet-18, 32 px, 2 steps; no figures) and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import signal
import statistics
import threading
import time
from pathlib import Path

import torch

from geo_ssl.pipeline.cluster import cluster
from geo_ssl.pipeline.fmow.index import index_fmow
from geo_ssl.pipeline.fmow.synth import synth_fmow
from geo_ssl.pipeline.shards.options import ShardOptions
from geo_ssl.pipeline.shards.write import write_shards
from geo_ssl.training.data.shard_list import resolve_shards, shard_counts
from geo_ssl.training.demo import evaluate_backbone
from geo_ssl.training.evaluation.export import export_backbone
from geo_ssl.training.trainer.checkpoint import LAST
from geo_ssl.training.trainer.config import config_from_dict
from geo_ssl.training.trainer.loop import pretrain
from geo_ssl.training.trainer.presets import preset_values
from geo_ssl.training.trainer.run_log import read_metrics

PRESET = "gassl-fmow-moco-geo-tp"


def build_data(
    out: Path, locations: int, k: int, realistic: bool, workers: int, resize: int
) -> tuple[str, float]:
    """The shard folder (reused when its manifest exists) and the seconds spent building it."""
    data = out / "data"
    if (data / "manifest.parquet").exists():
        return str(data), 0.0
    t0 = time.time()
    root, index = out / "fmow-synth", data / "index"
    print(
        synth_fmow(str(root), locations=locations, seed=0, realistic_sizes=realistic, workers=workers).line()
    )
    print(index_fmow(str(root), str(index), workers=workers).line())
    print(cluster(str(index), k=k, seed=0)["line"])
    options = ShardOptions(resize=resize, shard_bytes="64MB", seed=0, workers=workers)
    print(write_shards(str(index), str(data), options=options).line())
    return str(data), time.time() - t0


def _stop_after(seconds: float) -> threading.Timer:
    """SIGTERM to this process after `seconds`: the trainer finishes the step, checkpoints and returns."""
    timer = threading.Timer(max(1.0, seconds), lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.daemon = True
    timer.start()
    return timer


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-out/gpu-pretrain")
    p.add_argument("--locations", type=int, default=500)
    p.add_argument("--clusters", type=int, default=16)
    p.add_argument(
        "--steps", type=int, default=600, help="planned optimiser steps (the cosine schedule's end)"
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--budget-minutes", type=float, default=9.5, help="whole run, data build included")
    p.add_argument("--cpu-smoke", action="store_true", help="the tiny CPU run even where CUDA is present")
    p.add_argument(
        "--data-path", choices=("cpu", "gpu"), default="cpu",
        help="augmentation on the loader's cores (default, as geo-pretrain) or on the GPU (opt-in there); "
        "run both to compare them",
    )  # fmt: skip
    args = p.parse_args(argv)
    os.environ.setdefault("GEO_SSL_PROGRESS", "0")
    t_start = time.time()
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not cuda:
        print("gpu_pretrain: no CUDA device here; running a tiny CPU smoke run of the same code path "
              "(ResNet-18, 32 px, 2 steps). It measures nothing; run this on a GPU for the figures.")  # fmt: skip
        args.locations, args.clusters, args.steps, args.batch_size = 16, 2, 2, 8
        args.workers = min(args.workers, 2)
    data, build_s = build_data(
        out, args.locations, args.clusters, realistic=cuda, workers=args.workers, resize=448 if cuda else 64
    )
    train_views = sum(v for _, v in shard_counts(resolve_shards(data, "train")))
    steps_per_epoch = max(1, train_views // args.batch_size)  # --epoch-unit image: an epoch = the views
    values = {
        **preset_values(PRESET),
        "data": data,
        "out": str(out / "run"),
        "batch_size": args.batch_size,
        "moco_k": 1024 if cuda else 16,
        "lr": 0.03 * args.batch_size / 256,
        "epochs": max(1, math.ceil(args.steps / steps_per_epoch)),
        "max_steps": args.steps,
        "n_clusters": args.clusters,
        "num_workers": args.workers,
        "shuffle_buffer": 512,
        "knn_every": 0,
        "log_every": 10 if cuda else 1,
        "ckpt_every": 100000,
        "data_path": args.data_path,
    }
    if not cuda:
        values.update(arch="resnet18", image_size=32, bn_splits=1)
    cfg = config_from_dict(values, where="gpu_pretrain")
    if os.path.exists(os.path.join(cfg.out, LAST)):
        cfg.resume = True
    reserve_s = 90.0 if cuda else 0.0  # the two evaluations after training
    train_budget = args.budget_minutes * 60 - (time.time() - t_start) - reserve_s
    timer = _stop_after(train_budget) if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    result = pretrain(cfg)
    train_s = time.time() - t0
    if timer is not None:
        timer.cancel()
    peak = (
        {"allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
         "reserved_gib": torch.cuda.max_memory_reserved() / 2**30}
        if cuda else {}
    )  # fmt: skip
    rows = read_metrics(cfg.out, "train")
    steady = rows[2:] or rows  # the first windows hold start-up and cuDNN autotuning
    backbone = str(out / "backbone.pth")
    export_backbone(os.path.join(cfg.out, LAST), backbone)
    image_size = cfg.image_size
    ours = evaluate_backbone(backbone, data, image_size, args.workers)
    rand = evaluate_backbone("random", data, image_size, args.workers, arch=cfg.arch)
    device = torch.cuda.get_device_name(0) if cuda else platform.processor() or "CPU"
    report = {
        "device": device,
        "cuda": cuda,
        "torch": torch.__version__,
        "config": {k: values[k] for k in ("batch_size", "moco_k", "lr", "epochs", "max_steps", "num_workers")}
        | {
            "method": cfg.method,
            "arch": cfg.arch,
            "image_size": image_size,
            "amp": cfg.amp,
            "crop": cfg.crop,
            "epoch_unit": cfg.epoch_unit,
            "temperature": cfg.temperature,
            "data_path": cfg.data_path,
        },
        "data": {"locations": args.locations, "train_views": train_views, "build_s": build_s},
        "steps": result["steps"],
        "interrupted_by_budget": result["interrupted"],
        "train_s": train_s,
        "steps_per_s_median": statistics.median(r["steps_per_s"] for r in steady) if steady else None,
        "steps_per_s_overall": result["steps"] / train_s if train_s else None,
        "samples_per_s_median": statistics.median(r["samples_per_s"] for r in steady) if steady else None,
        "data_wait_median": statistics.median(r["data_wait"] for r in steady) if steady else None,
        "peak_gpu_memory": peak,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "final_loss": rows[-1]["loss"] if rows else None,
        "pretrained": ours,
        "random_init": rand,
        "wall_s": time.time() - t_start,
    }
    lines = [
        f"# GPU pretraining run: {cfg.arch} {cfg.method}, AMP {cfg.amp}, on {device}",
        "",
        f"Command: `python -m tests.bench.gpu_pretrain --out {args.out} --data-path {args.data_path}`"
        + ("" if cuda else " (no CUDA: CPU smoke run, no figures)"),
        f"Data: synth-fmow {args.locations} locations {'--realistic-sizes ' if cuda else ''}-> shards at "
        f"{448 if cuda else 64} px ({train_views} train views), built in {build_s:.0f} s.",
        f"Run: preset {PRESET} with batch {cfg.batch_size}, K {cfg.moco_k}, lr {cfg.lr:g}, {result['steps']} "
        f"steps in {train_s:.0f} s{' (stopped by the time budget)' if result['interrupted'] else ''}.",
        "",
        "| steps/s (median) | steps/s (overall) | samples/s | data wait | peak GPU memory alloc / reserved | peak RSS |",
        "|---|---|---|---|---|---|",
        f"| {_f(report['steps_per_s_median'])} | {_f(report['steps_per_s_overall'])} | "
        f"{_f(report['samples_per_s_median'], 0)} | {_f(report['data_wait_median'], 3)} | "
        f"{_f(peak.get('allocated_gib'))} / {_f(peak.get('reserved_gib'))} GiB | {report['peak_rss_mb']:.0f} MB |",
        "",
        "| backbone | kNN top-1 (k=20) | linear-probe top-1 |",
        "|---|---|---|",
        f"| random init | {rand['knn_top1']:.1f}% | {rand['linear_top1']:.1f}% |",
        f"| pretrained ({result['steps']} steps) | {ours['knn_top1']:.1f}% | {ours['linear_top1']:.1f}% |",
        "",
        f"Total wall time {report['wall_s']:.0f} s.",
        "",
    ]
    (out / "gpu_pretrain.md").write_text("\n".join(lines))
    (out / "gpu_pretrain.json").write_text(json.dumps(report, indent=1, default=str))
    print("\n".join(lines))


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    main()
