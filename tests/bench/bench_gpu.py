"""Benchmark the GPU data path: pairs/s of decode + MoCo-v2 augmentation on the device alone, and MoCo-v2
ResNet-50 training steps/s (AMP, channels_last) fed by it, with the share of step time spent waiting on data.

    python -m tests.bench.bench_gpu --out bench-out/gpu [--batch 256] [--steps 60] [--workers 6]

Data: the loader benchmark's "whole" shard set (whole images, shorter side 448, the paper's size; built by
tests.bench.bench_loader's pipeline if missing, cached in DATA). The loader runs with decode="defer" (the
CPU side only reads and selects JPEG bytes); geo_ssl.training.data.gpu_augment decodes them with nvJPEG
and augments the batch on the device, prefetching the next batch on a side stream.

Figures: (1) pairs/s of the GPU path alone on in-memory JPEG bytes (decode + augment, synchronised);
(2) MoCo-v2 ResNet-50 (K=65536, m=0.999, T=0.2, MLP head) steps/s with AMP (bf16 where supported) and
channels_last, on the same batches pre-augmented in GPU memory (the model's ceiling);
(3) the same training fed by loader workers + the GPU path, with the share of time waiting on data.
The run is bounded to about 10 minutes on one GPU. Without CUDA it says so, runs a tiny CPU smoke of the
same code (batch 4, 32 px, ResNet-18, a few steps) and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch


def _blobs(shards: Path, n: int) -> tuple[list[bytes], list[bytes]]:
    from tests.bench.bench_loader import stored_views

    views = stored_views(shards)
    rng = random.Random(0)
    return [rng.choice(views) for _ in range(n)], [rng.choice(views) for _ in range(n)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_path_alone(shards: Path, device: torch.device, batch: int, size: int, iters: int) -> dict:
    """(1) decode + augment of `batch` pairs per call, bytes already in memory."""
    from geo_ssl.training.data.gpu_augment import GpuAugment

    q, k = _blobs(shards, batch)
    aug = GpuAugment(size, device)
    b = {"q_jpeg": q, "k_jpeg": k, "geo_cluster": torch.zeros(batch, dtype=torch.int64),
         "category": torch.zeros(batch, dtype=torch.int64), "key": [str(i) for i in range(batch)]}  # fmt: skip
    aug.pairs(b, 0)  # warm-up: nvJPEG handles, kernels
    _sync(device)
    t0 = time.perf_counter()
    for i in range(iters):
        aug.pairs(b, i + 1)
    _sync(device)
    wall = time.perf_counter() - t0
    return {"pairs": batch * iters, "wall_s": wall, "pairs_per_s": batch * iters / wall}


def _model(arch: str, device: torch.device, channels_last: bool, k: int):
    from geo_ssl.training.models.moco import MoCo

    model = MoCo(arch, dim=128, K=k, m=0.999, T=0.2, mlp=True, shuffle_bn=True).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.03, momentum=0.9, weight_decay=1e-4
    )
    return model, opt


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _step(model, opt, scaler, q, k, dtype) -> None:
    with torch.autocast(q.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logits, labels, _ = model(q, k)
        loss = torch.nn.functional.cross_entropy(logits, labels)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


def train_steps(
    shards: Path, device: torch.device, arch: str, batch: int, size: int, steps: int, workers: int, k: int
) -> dict:
    """(2) steps/s on pre-augmented batches; (3) steps/s fed by the loader + GPU path, data-wait share."""
    from geo_ssl.training.data.gpu_augment import DeviceDataPath
    from geo_ssl.training.data.loader import LoaderConfig, pretrain_loader

    channels_last = device.type == "cuda"
    dtype = _amp_dtype(device)
    model, opt = _model(arch, device, channels_last, k)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    path = DeviceDataPath(device, size, seed=0, channels_last=channels_last)
    cfg = LoaderConfig(str(shards), split="train", batch_size=batch, image_size=size, num_workers=workers,
                       shuffle_buffer=min(1000, 4 * batch), decode="defer", epoch_samples=batch * (steps + 3))  # fmt: skip
    loader = pretrain_loader(cfg)
    # (2) the model's ceiling: one augmented batch reused, no data wait at all.
    one = pretrain_loader(replace(cfg, num_workers=0, epoch_samples=batch))
    gen = path.batches(iter(one), epoch=0)
    first = next(gen)
    gen.close()
    q, kk = first["q"], first["k"]
    for _ in range(3):
        _step(model, opt, scaler, q, kk, dtype)
    _sync(device)
    n2 = max(2, steps // 2)
    t0 = time.perf_counter()
    for _ in range(n2):
        _step(model, opt, scaler, q, kk, dtype)
    _sync(device)
    ceiling = n2 / (time.perf_counter() - t0)
    # (3) fed by the loader (decode="defer", workers) and the GPU path, prefetched on a side stream.
    wait = 0.0
    done = 0
    it = path.batches(iter(loader), epoch=1)
    for _ in range(3):  # warm-up: workers start, first batches
        b = next(it)
        _step(model, opt, scaler, b["q"], b["k"], dtype)
    _sync(device)
    t_start = time.perf_counter()
    while done < steps:
        t0 = time.perf_counter()
        try:
            b = next(it)
        except StopIteration:
            break
        _sync(device)  # the batch is ready when its event has passed; count that as data wait
        wait += time.perf_counter() - t0
        _step(model, opt, scaler, b["q"], b["k"], dtype)
        _sync(device)
        done += 1
    wall = time.perf_counter() - t_start
    it.close()
    return {
        "arch": arch,
        "batch": batch,
        "amp": str(dtype).replace("torch.", "") if dtype else "off",
        "channels_last": channels_last,
        "ceiling_steps_per_s": ceiling,
        "steps": done,
        "steps_per_s": done / wall,
        "pairs_per_s": done * batch / wall,
        "data_wait_share": wait / wall,
        "loader_workers": workers,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", help="cached build folder (default: bench-out/loader/data, else OUT/data)")
    parser.add_argument("--locations", type=int, default=48)
    parser.add_argument("--batch", type=int, default=256, help="pairs per step")
    parser.add_argument("--steps", type=int, default=60, help="measured training steps")
    parser.add_argument("--workers", type=int, default=min(6, os.cpu_count() or 1), help="loader workers")
    args = parser.parse_args(argv)
    os.environ.setdefault("GEO_SSL_PROGRESS", "0")
    from tests.bench.bench_loader import build_data

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    default_data = Path("bench-out/loader/data")
    data = Path(args.data) if args.data else (default_data if default_data.exists() else out / "data")
    sets, _ = build_data(data, args.locations)
    shards = sets["whole"]
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device on this machine; nothing to measure. Running a tiny CPU smoke "
              "of the same code (decode + batched augmentation + MoCo steps fed by the GPU path).", flush=True)  # fmt: skip
        torch.set_num_threads(1)
        device = torch.device("cpu")
        alone = gpu_path_alone(shards, device, batch=4, size=32, iters=2)
        train = train_steps(shards, device, "resnet18", batch=4, size=32, steps=2, workers=0, k=64)
        result = {"device": "cpu (smoke only, no CUDA)", "gpu_path_alone": alone, "training": train}
        print(json.dumps(result, indent=1))
        (out / "bench_gpu.md").write_text(
            "# GPU data path benchmark\n\nNo CUDA device on this machine: no figures. A CPU smoke of the same "
            f"code ran: {alone['pairs']} pairs through decode + batched augmentation, {train['steps']} MoCo "
            "steps fed by the deferred loader and the device path.\n"
        )
        return 0
    device = torch.device("cuda", 0)
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device)
    t0 = time.perf_counter()
    alone = gpu_path_alone(shards, device, args.batch, 224, iters=10)
    print("GPU path alone:", alone, flush=True)
    train = train_steps(shards, device, "resnet50", args.batch, 224, args.steps, args.workers, k=65536)
    print("training:", train, flush=True)
    peak_gpu = torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        "# GPU data path benchmark",
        "",
        f'Device: {name}; {os.cpu_count()} CPU cores, {args.workers} loader workers (decode="defer"). '
        f"Data: whole 448 px stored views. Batch {args.batch} pairs at 224 px. Total {time.perf_counter() - t0:.0f} s.",
        "",
        "| measurement | figure |",
        "|---|---:|",
        f"| (1) GPU path alone: nvJPEG decode + MoCo-v2 augmentation, pairs/s | {alone['pairs_per_s']:.0f} |",
        f"| (2) MoCo-v2 {train['arch']} steps/s, AMP {train['amp']}, channels_last, data in GPU memory | {train['ceiling_steps_per_s']:.2f} |",
        f"| (3) same, fed by the loader + GPU path: steps/s | {train['steps_per_s']:.2f} |",
        f"| (3) pairs/s | {train['pairs_per_s']:.0f} |",
        f"| (3) share of time waiting on data | {100 * train['data_wait_share']:.1f}% |",
        "",
        f"Peak GPU memory {peak_gpu:.1f} GiB; peak RSS of the benchmark process {rss:.0f} MB.",
    ]
    text = "\n".join(lines) + "\n"
    (out / "bench_gpu.md").write_text(text)
    (out / "bench_gpu.json").write_text(
        json.dumps({"device": name, "alone": alone, "training": train}, indent=1)
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
