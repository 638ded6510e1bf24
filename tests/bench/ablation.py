"""Ablation on synthetic fMoW built by the real pipeline: random init and hand-made features vs moco, +tp,
+geo, +geo+tp and a crop control, with checks of what +TP and +Geo are for.

    python -m tests.bench.ablation --out ablation-out [--steps 500 --seeds 0,1,2 --scene toy]

Data: synth-fmow --scene toy (800 locations of 10 fMoW categories, ~64 train locations each; one ground
pattern per biome, no roads or parcels, wider object strokes: see synth.Scene for why) -> index-fmow ->
cluster -> write-shards into OUT/data (the build layout, index in OUT/data/index). Every trained arm gets the
same budget (steps, batch, lr, seed, ResNet-18 at --image-size) and every row the same frozen evaluation
on the val split (every view an image): weighted kNN (k=20) and a linear probe on precomputed features,
raw and standardised (the verdict can flip between them). Rows:
- reference rows without learning: random init (a random network per seed) and two hand-made descriptors
  (handmade_features.py: a 48-number gradient-orientation histogram, a 64-number colour histogram);
- the SSL arms, and a control, "moco, +TP's crop": moco without temporal pairs but with GASSL's +TP crop
  (--crop gassl), since GASSL's +TP runs changed the crop too. The +tp arms here use the moco crop, so
  the control measures that crop's own effect;
- supervised (category labels, the same network, steps, batch, lr schedule and augmentation of the
  query view): what this budget can learn at all.
Mechanism checks per row (ablation_checks.py): temporal invariance (cosine of two dates of one place
against two places) and geo decodability (the linear probe on the K-means geo cluster id).

The recipe is MoCo-v2's, fitted to 500 CPU steps at 64 px before issue 18 and not tuned since
(BENCHMARKS.md has the probes behind each choice): peak lr 0.015, BatchNorm in the projection head
(--head-bn), smallest crop 0.4 of the view, key-encoder momentum 0.95, blur sigma scaled to the 64 px
crop, bf16 autocast where the CPU has AMX or AVX-512 BF16. About 10 minutes per seed on 2 idle CPU cores
(6 trainings). Re-running skips finished steps (the data, finished runs, finished evaluations in
OUT/evals) and continues interrupted runs; data built with other settings is refused. The table
(mean ± sample std, per seed, and whether each arm clears random init and the best hand-made row beyond
the spread) is rewritten after every finished seed: OUT/ablation.md and OUT/ablation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from geo_ssl.pipeline.cluster import cluster
from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.demo import TOY_CATEGORIES
from geo_ssl.pipeline.fmow.index import index_fmow
from geo_ssl.pipeline.fmow.layout import CATEGORIES
from geo_ssl.pipeline.fmow.synth import synth_fmow
from geo_ssl.pipeline.shards.options import ShardOptions
from geo_ssl.pipeline.shards.write import write_shards
from geo_ssl.training.demo import KNN_K, KNN_T, PROBE, cpu_has_bf16, frozen_features, linear_top1
from geo_ssl.training.demo import random_backbone as demo_random_backbone
from geo_ssl.training.evaluation.export import export_backbone, load_backbone
from geo_ssl.training.evaluation.linear_probe import assert_unchanged, snapshot
from geo_ssl.training.models.backbone import FeatureExtractor
from geo_ssl.training.models.knn import knn_top1, normalized
from geo_ssl.training.trainer.checkpoint import LAST, load_checkpoint
from geo_ssl.training.trainer.config import PretrainConfig
from geo_ssl.training.trainer.loop import pretrain
from geo_ssl.training.trainer.run_log import read_metrics
from tests.bench.ablation_checks import majority_floor, relabelled, standardised, temporal_invariance
from tests.bench.handmade_features import HANDMADE

METHODS = ("moco", "moco+tp", "moco+geo", "moco+geo+tp")
SUPERVISED = "supervised (reference)"
#: The control arm: plain moco (no temporal pairs) with GASSL's +TP crop, the one change +TP made besides pairs.
CONTROL = "moco, +TP's crop (control)"
#: Every SSL arm: (row name, --method, --crop, run folder).
SSL_ARMS = (
    ("moco", "moco", "moco", "moco"),
    ("moco+tp", "moco+tp", "moco", "moco_tp"),
    (CONTROL, "moco", "gassl", "moco_tpcrop"),
    ("moco+geo", "moco+geo", "moco", "moco_geo"),
    ("moco+geo+tp", "moco+geo+tp", "moco", "moco_geo_tp"),
)
#: Bump when the evaluation changes: cached evaluations (OUT/evals/*.json) of another version are redone.
EVAL_VERSION = 1


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


def train_arm(
    data: str, out: Path, arm: tuple[str, str, str, str], seed: int, args: argparse.Namespace
) -> dict:
    """Pretrain (or finish) one SSL arm for one seed and export its backbone; its row's training part."""
    name, method, crop, folder = arm
    cfg = run_config(data, out, method, args)
    cfg.seed, cfg.crop = seed, crop
    tag = folder + ("" if seed == 0 else f"-s{seed}")  # seed 0: the earlier folders
    cfg.out = str(out / "runs" / tag)
    print(f"== {name}, seed {seed}")
    seconds = pretrain_once(cfg)
    backbone = str(out / f"backbone-{tag}.pth")
    export_backbone(os.path.join(cfg.out, LAST), backbone)
    last = read_metrics(cfg.out, "train")[-1]
    return {"method": name, "seed": seed, "steps": last["step"], "pretrain_s": seconds, "crop": crop,
            "loss_moco": last["loss_moco"], "q_std": last["q_std"], "backbone": backbone}  # fmt: skip


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
    """A seeded random-init ResNet-18 backbone file (seed 0 is geo-eval's `--weights random`); the demo's."""
    path = out / f"random-s{seed}.pth"
    return str(path) if path.exists() else demo_random_backbone(str(path), seed)


def supervised_backbone(data: str, out: Path, seed: int, args: argparse.Namespace) -> dict:
    """The upper reference: the same budget spent on the category labels (cross-entropy, SGD, cosine lr)."""
    import torch
    import torch.nn.functional as F

    from geo_ssl.training.data.gassl_crop import augment_for
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
                           num_workers=args.workers, shuffle_buffer=200, seed=seed,
                           augmentation=augment_for("moco", args.image_size, args.crop_scale),
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with --amp auto resolved and the per-epoch sample count filled in."""
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
    return args


def evaluate(extractor: nn.Module, data: str, args: argparse.Namespace, cache: Path, what: dict) -> dict:
    """Every frozen probe of one row, cached in `cache` for the same `what` (a rerun skips finished rows):
    category kNN and linear probe on raw and standardised features, the geo-cluster probe (raw and
    standardised, with its majority floor) and temporal invariance on the val split (raw and standardised)."""
    what = {"version": EVAL_VERSION, "image_size": args.image_size, **what}
    if cache.exists() and (found := json.loads(cache.read_text())).get("what") == what:
        return found["scores"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    extractor = extractor.to(device)
    before = snapshot(extractor)
    train, geo_train = frozen_features(extractor, data, "train", args.image_size, args.workers, device)
    val, geo_val = frozen_features(extractor, data, "val", args.image_size, args.workers, device)
    assert_unchanged(extractor, before)
    ztrain, zval = standardised(train, val)
    same, zsame = temporal_invariance(val), temporal_invariance(zval)
    scores = {
        "knn_top1": knn_top1(normalized(train), normalized(val), k=KNN_K, T=KNN_T)["top1"],
        "linear_top1": linear_top1(train, val),
        "linear_std_top1": linear_top1(ztrain, zval),
        "geo_top1": linear_top1(relabelled(train, geo_train), relabelled(val, geo_val)),
        "geo_std_top1": linear_top1(relabelled(ztrain, geo_train), relabelled(zval, geo_val)),
        "geo_floor": majority_floor(geo_train, geo_val),
        "same_cos": same["same"],
        "diff_cos": same["different"],
        "temporal_gap": same["gap"],
        "temporal_gap_std": zsame["gap"],
        "pairs": same["pairs"],
        "n_train": len(train.labels),
        "n_val": len(val.labels),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"what": what, "scores": scores}))
    return scores


def backbone_extractor(weights: str) -> nn.Module:
    return FeatureExtractor(load_backbone(weights)[0])


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def verdict(mine: list[float], base: list[float]) -> tuple[float, float, str]:
    """(mean gap, spread = std of both, above | inside | below): a gap counts only beyond the spread."""
    (m, sd), (m0, sd0) = spread(mine), spread(base)
    gap, room = m - m0, sd + sd0
    return gap, room, "above" if gap > room else "below" if gap < -room else "inside"


def crop_of(crop: str, scale: float) -> str:
    where = "whole view" if crop == "moco" else "central square"
    return f"{crop}: {scale:g}-1 of the {where}"


#: The table's metrics: (row key, column title).
CATEGORY = (("knn_top1", "kNN"), ("linear_top1", "linear raw"), ("linear_std_top1", "linear standardised"))
CHECKS = (("same_cos", "cos same place"), ("diff_cos", "cos other place"), ("temporal_gap", "gap raw"),
          ("temporal_gap_std", "gap standardised"), ("geo_top1", "geo probe raw"),
          ("geo_std_top1", "geo probe standardised"))  # fmt: skip


def table(rows: list[dict], args: argparse.Namespace, card: dict, seeds: list[int]) -> list[str]:
    """OUT/ablation.md: settings, mean ± std per row, verdicts, mechanism checks, every seed."""
    splits, n_cat = card["splits"], len(args.categories.split(",")) if args.categories != "all" else 62
    every = ["random init", *HANDMADE, *(a[0] for a in SSL_ARMS), SUPERVISED]
    by = {name: [r for r in rows if r["method"] == name] for name in every}
    order = [name for name in every if by[name]]  # a partial table (run still going) has rows missing
    floor = rows[0]["geo_floor"]
    lines = [
        f"# Ablation: frozen features on synthetic fMoW ({n_cat} categories), with hand-made references",
        "",
        f"Data: synth-fmow --scene {args.scene}, {args.locations} locations, views stored at {args.resize} px "
        f"-> index -> cluster (k={args.clusters}) -> write-shards; train {splits['train']['samples']} "
        f"locations / {splits['train']['views']} views, val {splits['val']['samples']} / "
        f"{splits['val']['views']}.",
        f"Pretraining (every SSL arm and the supervised row, each training seed): ResNet-18, {args.steps} steps "
        f"({args.epochs} epochs of {args.epoch_samples} samples), batch {args.batch_size}, {args.image_size} px, "
        f"K={args.queue}, m={args.momentum}, T={args.temperature}, lr {args.lr} (cosine), head BN "
        f"{'on' if args.head_bn else 'off'}, amp {args.amp}, CPU; seeds {','.join(map(str, seeds))}. "
        f"Crops: moco, moco+tp, moco+geo, moco+geo+tp and the supervised row use "
        f"{crop_of('moco', args.crop_scale)} (RandomResizedCrop; the +tp arms here do NOT use GASSL's +TP "
        f"crop); the control arm uses {crop_of('gassl', args.crop_scale)} (GASSL's +TP crop, at this "
        "ablation's smallest area instead of GASSL's 0.08), so it measures that crop's own effect.",
        f"Evaluation (every row alike, frozen, eval transform, every view an image, train split -> val split): "
        f"kNN k={KNN_K}, T={KNN_T} on L2-normalised features; linear probe {PROBE['epochs']} epochs, SGD lr "
        f"{PROBE['lr']}, momentum 0.9, wd 0, batch {PROBE['batch_size']}, {PROBE['schedule']} schedule, "
        "last epoch reported, on raw features and on standardised features (z-score with the train "
        "split's per-dimension mean and std). Hand-made rows: no training, one deterministic row each "
        "(std 0): orientation histogram = 12 unsigned gradient-orientation bins x 2 x 2 cells of the grey "
        "image, Sobel-magnitude weighted (48 numbers); colour histogram = joint 4 x 4 x 4 RGB (64 numbers); "
        "both L2-normalised. Random init: a different random ResNet-18 per seed.",
        f"Mechanism checks: temporal invariance = mean cosine similarity of raw features of two views "
        f"(dates) of one val location ('same place', {rows[0]['pairs']} pairs) and of two views of different "
        "val locations ('other place', as many pairs), and their gap, also on standardised features; pairs "
        "drawn once (seed 0) from the keys, the same for every row. Geo decodability = the same linear "
        f"probe trained on the K-means geo cluster id (k={args.clusters}) instead of the category; floor "
        f"(always the train split's most common cluster) {floor:.1f}%.",
        "",
        "## Category top-1 (%), mean ± sample std over seeds",
        "",
        "| row | seeds | steps | pretrain s | final loss_moco | q std | "
        + " | ".join(title for _, title in CATEGORY) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(CATEGORY),
    ]  # fmt: skip

    def cell(mine: list[dict], key: str, digits: int = 1) -> str:
        m, sd = spread([r[key] for r in mine])
        return f"{m:.{digits}f} ± {sd:.{digits}f}"

    for name in order:
        mine = by[name]
        loss = f"{statistics.fmean(r['loss_moco'] for r in mine):.3f}" if "loss_moco" in mine[0] else "-"
        qstd = f"{statistics.fmean(r['q_std'] for r in mine):.4f}" if "q_std" in mine[0] else "-"
        lines.append(f"| {name} | {len(mine) if mine[0]['seed'] is not None else '-'} | {mine[0]['steps']} | "
                     f"{statistics.fmean(r['pretrain_s'] for r in mine):.0f} | {loss} | {qstd} | "
                     + " | ".join(cell(mine, key) for key, _ in CATEGORY) + " |")  # fmt: skip
    best = {key: max(HANDMADE, key=lambda h: by[h][0][key]) for key, _ in CATEGORY}
    lines += [
        "",
        "## Beyond the spread? (gap of the means; spread = std of the row + std of the reference)",
        "",
        "'above' / 'below': the gap is larger than the spread; 'inside': it is not. Best hand-made row per "
        "metric: " + ", ".join(f"{title} {best[key]}" for key, title in CATEGORY) + ".",
        "",
        "| row | " + " | ".join(f"{t} vs random init" for _, t in CATEGORY)
        + " | " + " | ".join(f"{t} vs best hand-made" for _, t in CATEGORY) + " |",
        "|---|" + "---|" * (2 * len(CATEGORY)),
    ]  # fmt: skip
    for name in order[1 + len(HANDMADE) :]:
        cells = []
        for ref in ("random init", None):
            for key, _ in CATEGORY:
                base = by[ref or best[key]]
                gap, room, word = verdict([r[key] for r in by[name]], [r[key] for r in base])
                cells.append(f"{gap:+.1f} ({room:.1f}) {word}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Mechanism checks, mean ± sample std over seeds",
        "",
        "| row | " + " | ".join(title for _, title in CHECKS) + " |",
        "|---|" + "---|" * len(CHECKS),
    ]
    for name in order:
        lines.append(
            f"| {name} | "
            + " | ".join(cell(by[name], key, 1 if "top1" in key else 3) for key, _ in CHECKS)
            + " |"
        )
    lines += [
        "",
        "## Every seed",
        "",
        "| row | seed | " + " | ".join(t for _, t in (*CATEGORY, *CHECKS)) + " |",
        "|---|---|" + "---|" * (len(CATEGORY) + len(CHECKS)),
    ]
    for name in order:
        for r in by[name]:
            values = [f"{r[k]:.1f}" if "top1" in k else f"{r[k]:.3f}" for k, _ in (*CATEGORY, *CHECKS)]
            lines.append(
                f"| {name} | {'-' if r['seed'] is None else r['seed']} | " + " | ".join(values) + " |"
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    os.environ.setdefault("GEO_SSL_PROGRESS", "0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    categories = None if args.categories == "all" else tuple(c for c in args.categories.split(",") if c)
    data = build_data(out, args.locations, args.clusters, args.seed, categories, args.resize, args.scene)
    card = json.loads(fsio.read_bytes(os.path.join(data, "dataset.json")))
    evals = out / "evals"
    rows: list[dict] = []

    def write_table(final: bool) -> None:
        """OUT/ablation.md and .json, rewritten after every finished row (a stopped run leaves a table)."""
        done = [seed for seed in seeds if any(r["seed"] == seed and r["steps"] for r in rows)]
        lines = table(rows, args, card, done)
        state = "all rows finished" if final else "PARTIAL: the run is still going or was stopped"
        lines += ["", f"Wall time {time.time() - t_start:.0f} s this invocation ({state}; finished steps "
                  "are reused on a rerun).", ""]  # fmt: skip
        (out / "ablation.md").write_text("\n".join(lines))
        (out / "ablation.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
        if final:
            print("\n".join(lines))

    for name, make in HANDMADE.items():
        print(f"== {name}")
        tag = name.split(" (")[0].replace(" ", "_")
        rows.append({"method": name, "seed": None, "steps": 0, "pretrain_s": 0.0, "crop": "-",
                     **evaluate(make(), data, args, evals / f"{tag}.json", {"row": name})})  # fmt: skip
    for seed in seeds:  # the cheap rows of every seed first: random init needs no training
        print(f"== random init, seed {seed}")
        weights = random_backbone(out, seed)
        rows.append({"method": "random init", "seed": seed, "steps": 0, "pretrain_s": 0.0, "crop": "-",
                     **evaluate(backbone_extractor(weights), data, args, evals / f"random-s{seed}.json",
                                {"weights": weights})})  # fmt: skip
    for seed in seeds:
        for arm in SSL_ARMS:
            row = train_arm(data, out, arm, seed, args)
            cache = evals / f"{Path(row['backbone']).stem}.json"
            what = {"weights": row["backbone"], "steps": row["steps"]}
            rows.append({**row, **evaluate(backbone_extractor(row["backbone"]), data, args, cache, what)})
            write_table(final=False)
        print(f"== {SUPERVISED}, seed {seed}")
        sup = supervised_backbone(data, out, seed, args)
        weights = str(out / f"supervised-s{seed}.pth")
        rows.append({"method": SUPERVISED, "seed": seed, **sup, "crop": "moco",
                     **evaluate(backbone_extractor(weights), data, args, evals / f"supervised-s{seed}.json",
                                {"weights": weights, "steps": sup["steps"]})})  # fmt: skip
        write_table(final=False)
    write_table(final=True)


if __name__ == "__main__":
    main()
