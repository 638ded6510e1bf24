"""Trainer throughput on CPU: steps/s of the real loop on real shards vs the same model on in-memory tensors.

    python -m tests.bench.bench_trainer --out bench-out [--steps 40 --image-size 64 --batch-size 32]

Three measurements in one run, same model (ResNet-18 MoCo+geo+TP), same batch and resolution:
  baseline  the training step alone, fed pre-made tensors (the ceiling);
  loader    the pretrain loader alone (batches/s it can supply);
  trainer   `pretrain()` on the shards, per loader worker count: steps/s, samples/s and the share of
            wall time spent waiting for the next batch (goal: under 5%).
Shards: 448 px views (fMoW's stored size), so decoding costs what it would on real data.
Writes OUT/bench_trainer.md and OUT/bench_trainer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from geo_ssl.training.data.loader import LoaderConfig, pretrain_loader
from geo_ssl.training.methods import get_method
from geo_ssl.training.trainer.config import PretrainConfig, resolved_bn_splits
from geo_ssl.training.trainer.loop import pretrain
from geo_ssl.training.trainer.run_log import read_metrics
from tests.shard_fixtures import make_tiny_shards


def _rss_mb() -> tuple[float, float]:
    """Peak RSS of this process and of its (finished) children, MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, kids


def bench_baseline(cfg: PretrainConfig, steps: int) -> float:
    """Steps/s of forward + backward + SGD on fixed random tensors (no data loading at all)."""
    torch.manual_seed(0)
    method = get_method(cfg.method)
    model = method.family.build(cfg, method, n_clusters=cfg.n_clusters, bn_splits=resolved_bn_splits(cfg, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    s, b = cfg.image_size, cfg.batch_size
    q, k, geo = torch.randn(b, 3, s, s), torch.randn(b, 3, s, s), torch.randint(0, cfg.n_clusters, (b,))
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        loss, _ = model(q, k, geo)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return 1.0 / statistics.mean(times)


def bench_loader(cfg: PretrainConfig, batches: int, num_workers: int) -> float:
    lc = LoaderConfig(cfg.data, split="train", batch_size=cfg.batch_size, image_size=cfg.image_size,
                      num_workers=num_workers, shuffle_buffer=cfg.shuffle_buffer, epoch_samples=cfg.batch_size * (batches + 2))  # fmt: skip
    it = iter(pretrain_loader(lc))
    next(it), next(it)  # start-up (worker spawn, first shard open)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - t0)


def bench_trainer(cfg: PretrainConfig, steps: int, num_workers: int, out: Path) -> dict:
    run = PretrainConfig(**{**cfg.as_dict(), "out": str(out / f"run-w{num_workers}"), "num_workers": num_workers,
                            "epoch_samples": cfg.batch_size * steps})  # fmt: skip
    pretrain(run)
    rows = read_metrics(run.out, "train")[1:]  # the first window holds worker start-up
    return {
        "steps_per_s": statistics.mean(r["steps_per_s"] for r in rows),
        "samples_per_s": statistics.mean(r["samples_per_s"] for r in rows),
        "data_wait": statistics.mean(r["data_wait"] for r in rows),
    }


def run(out: str, steps: int = 40, image_size: int = 64, batch_size: int = 32, locations: int = 160) -> dict:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        shards = Path(tmp) / "shards"
        make_tiny_shards(shards, n_locations=locations, n_shards=4, image_size=448, max_views=6, n_clusters=8)
        cfg = PretrainConfig(
            data=str(shards), out=str(Path(tmp) / "runs"), arch="resnet18", method="moco+geo+tp",
            image_size=image_size, batch_size=batch_size, moco_k=4096, n_clusters=8, epochs=1, knn_every=0,
            log_every=5, ckpt_every=10_000, shuffle_buffer=64,
        )  # fmt: skip
        threads = torch.get_num_threads()
        baseline = bench_baseline(cfg, steps=min(steps, 15))
        loader = {w: bench_loader(cfg, batches=min(steps, 20), num_workers=w) for w in (0, 1, 2)}
        trainer = {w: bench_trainer(cfg, steps, w, Path(tmp)) for w in (0, 1, 2)}
    own, kids = _rss_mb()
    result = {
        "config": {
            "arch": "resnet18",
            "image_size": image_size,
            "batch_size": batch_size,
            "steps": steps,
            "torch_threads": threads,
            "cpus": os.cpu_count(),
        },
        "baseline_steps_per_s": baseline,
        "loader_batches_per_s": loader,
        "trainer": trainer,
        "peak_rss_mb": {"main": own, "children": kids},
    }
    lines = [
        "# Trainer throughput (CPU)",
        "",
        f"ResNet-18 MoCo+geo+TP, {image_size} px, batch {batch_size}, {steps} steps, {threads} torch threads, "
        f"{os.cpu_count()} CPUs. Shards hold 448 px JPEG views.",
        "",
        "| setup | loader workers | steps/s | samples/s | vs baseline | data wait |",
        "|---|---|---|---|---|---|",
        f"| baseline: step on in-memory tensors | - | {baseline:.2f} | {baseline * batch_size:.1f} | 1.00 | 0% |",
    ]
    for w, r in trainer.items():
        lines.append(
            f"| trainer on shards | {w} | {r['steps_per_s']:.2f} | {r['samples_per_s']:.1f} | "
            f"{r['steps_per_s'] / baseline:.2f} | {100 * r['data_wait']:.1f}% |"
        )
    lines += ["", "| loader alone | workers | batches/s |", "|---|---|---|"]
    lines += [f"| pretrain_loader | {w} | {v:.2f} |" for w, v in loader.items()]
    lines += ["", f"Peak RSS: main process {own:.0f} MB, loader workers (largest) {kids:.0f} MB.", ""]
    (out_dir / "bench_trainer.md").write_text("\n".join(lines))
    (out_dir / "bench_trainer.json").write_text(json.dumps(result, indent=1))
    print("\n".join(lines))
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-out")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    os.environ.setdefault("GEO_SSL_PROGRESS", "0")
    run(args.out, steps=args.steps, image_size=args.image_size, batch_size=args.batch_size)


if __name__ == "__main__":
    main()
