"""Ablation on synthetic fMoW built by the real pipeline: random init vs moco, +tp, +geo, +geo+tp.

    python -m tests.bench.ablation --out ablation-out [--steps 500 --seeds 0,1,2 --scene toy]

Data: synth-fmow --scene toy (800 locations of 10 fMoW categories, ~64 train locations each; one ground
pattern per biome, no roads or parcels, wider object strokes: see synth.Scene for why) -> index-fmow ->
cluster -> write-shards into OUT/data (the build layout, index in OUT/data/index). Every method gets the
same budget (steps, batch, lr, seed, ResNet-18 at --image-size) and the same frozen evaluation of its
exported backbone on the val split's categories (every view an image): a linear probe on precomputed
features and weighted kNN (k=20). A supervised row (category labels, the same network, steps, batch, lr
schedule and augmentation of the query view) is the reference for what this budget can learn at all.

The recipe is MoCo-v2's, fitted to 500 CPU steps at 64 px (BENCHMARKS.md has the probes behind each
choice): peak lr 0.015 (0.06 held every arm below random init), BatchNorm in the projection head
(--head-bn), smallest crop 0.4 of the view, key-encoder momentum 0.95, blur sigma scaled to the 64 px
crop, bf16 autocast where the CPU has AMX or AVX-512 BF16. About 27 minutes on 2 such CPU cores with the
defaults (15 runs). Re-running skips finished steps (the data, finished runs) and continues interrupted
runs; data built with other settings is refused. Every arm (random init included: a random network per
seed) runs once per training seed in --seeds on the same data; the table gives mean ± sample std and
whether each method clears random init beyond the spread. Writes OUT/ablation.md and OUT/ablation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from geo_ssl.pipeline.cluster import cluster
from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.fmow.index import index_fmow
from geo_ssl.pipeline.fmow.layout import CATEGORIES
from geo_ssl.pipeline.fmow.synth import synth_fmow
from geo_ssl.pipeline.shards.options import ShardOptions
from geo_ssl.pipeline.shards.write import write_shards
from geo_ssl.training.demo import evaluate_backbone
from geo_ssl.training.evaluation.export import export_backbone
from geo_ssl.training.trainer.checkpoint import LAST, load_checkpoint
from geo_ssl.training.trainer.config import PretrainConfig
from geo_ssl.training.trainer.loop import pretrain
from geo_ssl.training.trainer.run_log import read_metrics

METHODS = ("moco", "moco+tp", "moco+geo", "moco+geo+tp")
SUPERVISED = "supervised (reference)"


#: The toy ablation's classes: ten fMoW categories whose synthetic drawings differ in shape.
TOY_CATEGORIES = ("airport", "crop_field", "golf_course", "interchange", "parking_lot_or_garage", "solar_farm",
                  "stadium", "storage_tank", "swimming_pool", "wind_farm")  # fmt: skip


def build_data(
    out: Path, locations: int, k: int, seed: int, categories: tuple[str, ...] | None = TOY_CATEGORIES,
    resize: int = 64, scene: str = "toy",
) -> str:  # fmt: skip
    """The shard folder (reused when its manifest exists and was built with the same settings)."""
    data, stamp = out / "data", out / "data-settings.json"
    settings = {"locations": locations, "clusters": k, "seed": seed, "resize": resize, "scene": scene,
                "categories": list(categories) if categories else "all"}  # fmt: skip
    if (data / "manifest.parquet").exists():
        found = json.loads(stamp.read_text()) if stamp.exists() else None
        if found != settings:
            raise SystemExit(f"ablation: {data} was built with other settings ({found}); use a new --out")
        return str(data)
    stamp.write_text(json.dumps(settings))
    root, index = out / "fmow-synth", data / "index"
    print(synth_fmow(str(root), locations=locations, seed=seed, categories=categories, scene=scene).line())
    print(index_fmow(str(root), str(index)).line())
    print(cluster(str(index), k=k, seed=seed)["line"])
    print(
        write_shards(
            str(index), str(data), options=ShardOptions(resize=resize, shard_bytes="8MB", seed=seed)
        ).line()
    )
    return str(data)


def run_config(data: str, out: Path, method: str, args: argparse.Namespace) -> PretrainConfig:
    return PretrainConfig(
        data=data, out=str(out / "runs" / method.replace("+", "_")), method=method, arch="resnet18",
        image_size=args.image_size, batch_size=args.batch_size, moco_k=args.queue, moco_m=args.momentum,
        temperature=args.temperature, head_bn=args.head_bn, crop_scale=args.crop_scale, amp=args.amp,
        lr=args.lr, epochs=args.epochs, epoch_samples=args.epoch_samples, num_workers=args.workers,
        shuffle_buffer=200, seed=args.seed,
        knn_every=0, log_every=5, ckpt_every=max(1, args.steps // args.epochs),  # one per epoch, as --epochs says
    )  # fmt: skip


def pretrain_once(cfg: PretrainConfig) -> float:
    """Train (or finish) one arm; returns its pretraining wall time (over all calls, when recorded)."""
    ckpt, timing = os.path.join(cfg.out, LAST), Path(cfg.out) / "ablation_seconds.json"
    spent = json.loads(timing.read_text())["seconds"] if timing.exists() else 0.0
    if os.path.exists(ckpt):
        state = load_checkpoint(ckpt)
        if state["step"] >= cfg.epochs * state["steps_per_epoch"]:
            return spent
        cfg.resume = True
    t0 = time.time()
    pretrain(cfg)
    spent += time.time() - t0
    timing.write_text(json.dumps({"seconds": spent}))
    return spent


def random_backbone(out: Path, seed: int) -> str:
    """A seeded random-init ResNet-18 backbone file (seed 0 is geo-eval's `--weights random`)."""
    import torch

    from geo_ssl.training.models.backbone import build_resnet

    path = out / f"random-s{seed}.pth"
    if not path.exists():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_resnet("resnet18")
        torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, path)
    return str(path)


def supervised_backbone(data: str, out: Path, seed: int, args: argparse.Namespace) -> dict:
    """The upper reference: the same budget spent on the category labels (cross-entropy, SGD, cosine lr)."""
    import torch
    import torch.nn.functional as F

    from geo_ssl.training.data.loader import LoaderConfig, pretrain_loader
    from geo_ssl.training.models.backbone import build_resnet
    from geo_ssl.training.trainer.schedule import LrFactor

    path = out / f"supervised-s{seed}.pth"
    info = out / f"supervised-s{seed}.json"
    if path.exists() and info.exists():
        return json.loads(info.read_text())
    t0 = time.time()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_resnet("resnet18", num_classes=len(CATEGORIES))
        bf16 = args.amp == "bf16"  # autocast as the SSL arms get it; channels-last pays here (plain BN)
        if bf16:
            net = net.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
        cfg = LoaderConfig(urls=data, split="train", batch_size=args.batch_size, image_size=args.image_size,
                           num_workers=args.workers, shuffle_buffer=200, seed=seed, crop_scale=args.crop_scale,
                           epoch_samples=args.epoch_samples)  # fmt: skip
        loader = pretrain_loader(cfg)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, LrFactor("cosine", args.epochs * len(loader)))
        step, loss = 0, float("nan")
        for epoch in range(args.epochs):
            loader.set_epoch(epoch)
            for batch in loader:
                images = batch["q"].contiguous(memory_format=torch.channels_last) if bf16 else batch["q"]
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    logits = net(images)
                out_loss = F.cross_entropy(logits.float(), batch["category"])
                opt.zero_grad(set_to_none=True)
                out_loss.backward()
                opt.step()
                sched.step()
                step, loss = step + 1, out_loss.item()
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, path)
    result = {"steps": step, "pretrain_s": time.time() - t0, "loss_ce": loss}
    info.write_text(json.dumps(result))
    return result


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix units (AMX or AVX-512 BF16), where bf16 autocast pays (Linux flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="ablation-out")
    p.add_argument("--locations", type=int, default=800)
    p.add_argument(
        "--categories", default=",".join(TOY_CATEGORIES), help="comma-separated fMoW categories ('all' = 62)"
    )
    p.add_argument("--clusters", type=int, default=8)
    p.add_argument(
        "--scene", default="toy", choices=("toy", "fmow"), help="synth-fmow scene (toy: see synth.Scene)"
    )
    p.add_argument("--steps", type=int, default=500, help="training steps per arm")
    p.add_argument(
        "--epochs", type=int, default=4, help="epochs the steps are cut into (a checkpoint ends each)"
    )
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--resize", type=int, default=64, help="stored view size (shorter side) in the shards")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--queue", type=int, default=128, help="MoCo K; keep it well below the train locations")
    p.add_argument(
        "--lr", type=float, default=0.015, help="peak lr (cosine; MoCo-v2 scaled to batch 32: 0.00375)"
    )
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument(
        "--momentum", type=float, default=0.95, help="MoCo key-encoder momentum m (MoCo-v2: 0.999)"
    )
    p.add_argument("--head-bn", action=argparse.BooleanOptionalAction, default=True,
                   help="BatchNorm in the projection head (heads.py: why short runs need it)")  # fmt: skip
    p.add_argument("--crop-scale", type=float, default=0.4, help="smallest crop area (MoCo-v2: 0.2)")
    p.add_argument("--amp", default="auto", choices=("auto", "off", "bf16"),
                   help="bf16 autocast; auto = bf16 on a CPU with AMX or AVX-512 BF16 (1.2x per MoCo step)")  # fmt: skip
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="loader workers (0: in the training process, fastest on 2 cores)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument(
        "--seeds",
        default="0,1,2",
        help="comma-separated training seeds (init, order, augmentation), e.g. 0,1,2",
    )
    args = p.parse_args(argv)
    args.epoch_samples = args.steps // args.epochs * args.batch_size
    if args.amp == "auto":
        args.amp = "bf16" if cpu_has_bf16() else "off"
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    os.environ.setdefault("GEO_SSL_PROGRESS", "0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    categories = None if args.categories == "all" else tuple(c for c in args.categories.split(",") if c)
    data = build_data(out, args.locations, args.clusters, args.seed, categories, args.resize, args.scene)
    card = json.loads(fsio.read_bytes(os.path.join(data, "dataset.json")))
    rows = []
    for seed in seeds:
        print(f"== random init, seed {seed}")
        rows.append({"method": "random init", "seed": seed, "steps": 0, "pretrain_s": 0.0,
                     **evaluate_backbone(random_backbone(out, seed), data, args.image_size, args.workers)})  # fmt: skip
        print(f"== {SUPERVISED}, seed {seed}")
        sup = supervised_backbone(data, out, seed, args)
        rows.append({"method": SUPERVISED, "seed": seed, **sup,
                     **evaluate_backbone(str(out / f"supervised-s{seed}.pth"), data, args.image_size, args.workers)})  # fmt: skip
        for method in METHODS:
            cfg = run_config(data, out, method, args)
            cfg.seed = seed
            tag = method.replace("+", "_") + ("" if seed == 0 else f"-s{seed}")  # seed 0: the earlier folders
            cfg.out = str(out / "runs" / tag)
            print(f"== {method}, seed {seed}")
            seconds = pretrain_once(cfg)
            backbone = str(out / f"backbone-{tag}.pth")
            export_backbone(os.path.join(cfg.out, LAST), backbone)
            last = read_metrics(cfg.out, "train")[-1]
            rows.append({"method": method, "seed": seed, "steps": last["step"], "pretrain_s": seconds,
                         "loss_moco": last["loss_moco"], "q_std": last["q_std"],
                         **evaluate_backbone(backbone, data, args.image_size, args.workers)})  # fmt: skip
    splits = card["splits"]
    lines = [
        f"# Ablation: frozen ResNet-18 features on synthetic fMoW (category, {len(categories or CATEGORIES)} classes)",
        "",
        f"Data: synth-fmow --scene {args.scene}, {args.locations} locations "
        f"({'all' if categories is None else len(categories)} categories), views stored at {args.resize} px -> "
        f"index -> cluster (k={args.clusters}) -> write-shards; train {splits['train']['samples']} locations / "
        f"{splits['train']['views']} views, val {splits['val']['samples']} / {splits['val']['views']}.",
        f"Pretraining: {args.steps} steps ({args.epochs} epochs of {args.epoch_samples} samples), batch "
        f"{args.batch_size}, {args.image_size} px, K={args.queue}, m={args.momentum}, T={args.temperature}, "
        f"lr {args.lr} (cosine), head BN {'on' if args.head_bn else 'off'}, crop scale {args.crop_scale}-1, "
        f"amp {args.amp}, seeds {','.join(map(str, seeds))}, CPU. Evaluation: frozen backbone, "
        "features of every view (eval transform), linear probe 30 epochs (SGD lr 1.0, cosine, wd 0) and kNN "
        "(k=20, T=0.1), train split -> val split.",
        "",
        "| method | seeds | steps | pretrain s (mean) | final loss_moco | q std (1/sqrt(128)=0.088) | "
        "kNN top-1 mean ± std | linear top-1 mean ± std |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in ("random init", *METHODS, SUPERVISED):
        mine = [r for r in rows if r["method"] == method]
        knn, lin = spread([r["knn_top1"] for r in mine]), spread([r["linear_top1"] for r in mine])
        loss = f"{statistics.fmean(r['loss_moco'] for r in mine):.3f}" if "loss_moco" in mine[0] else "-"
        std = f"{statistics.fmean(r['q_std'] for r in mine):.4f}" if "q_std" in mine[0] else "-"
        lines.append(f"| {method} | {len(mine)} | {mine[0]['steps']} | "
                     f"{statistics.fmean(r['pretrain_s'] for r in mine):.0f} | {loss} | {std} | "
                     f"{knn[0]:.1f} ± {knn[1]:.1f}% | {lin[0]:.1f} ± {lin[1]:.1f}% |")  # fmt: skip
    lines += [
        "",
        "Above random init by more than the spread (mean gap > std of the method + std of random init):",
        "",
    ]
    base = [r for r in rows if r["method"] == "random init"]
    for method in (*METHODS, SUPERVISED):
        mine = [r for r in rows if r["method"] == method]
        verdicts = []
        for metric in ("knn_top1", "linear_top1"):
            (m, sd), (m0, sd0) = spread([r[metric] for r in mine]), spread([r[metric] for r in base])
            verdict = "yes" if m - m0 > sd + sd0 else "no"
            verdicts.append(f"{metric.split('_')[0]} {m - m0:+.1f} points ({verdict})")
        lines.append(f"- {method}: " + ", ".join(verdicts))
    lines += ["", "Per seed (kNN / linear top-1):", ""]
    lines += [
        f"- {r['method']}, seed {r['seed']}: {r['knn_top1']:.1f}% / {r['linear_top1']:.1f}%" for r in rows
    ]
    lines += ["", f"Total wall time {time.time() - t_start:.0f} s (data build included when not reused).", ""]
    (out / "ablation.md").write_text("\n".join(lines))
    (out / "ablation.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
