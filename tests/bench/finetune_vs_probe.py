"""Fine-tuning vs the linear probe of one checkpoint on the toy synthetic fMoW (issue 18, item 5).

    python -m tests.bench.finetune_vs_probe --out ftvp-out [--locations 300 --steps 300]

Data: the ablation's toy shards (tests/bench/ablation.py build_data: synth-fmow --scene toy, 10 categories,
64 px views), with fewer locations so that it builds in a couple of minutes. One short moco pretraining
run with the ablation's CPU recipe (ablation.run_config: ResNet-18 at 64 px, batch 32, K 128, m 0.95,
head BN, crop scale 0.4), then the real commands on its checkpoint-last.pt:

    geo-eval linear-probe  GASSL's probe as geo-eval's defaults (100 epochs, lr 1, step schedule)
    geo-eval finetune      the whole network, --bn frozen (GASSL), the flags below fitted to the toy scale

Both score every stored view of the val split and print top-1, macro F1 and the per-location top-1 (a
location's views vote). Writes OUT/finetune_vs_probe.json; re-running reuses the data and the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.bench.ablation import TOY_CATEGORIES, build_data, cpu_has_bf16, pretrain_once, run_config

REPO = Path(__file__).resolve().parents[2]
FIGURES = ("top1", "macro_f1", "per_location_top1")


def geo_eval(command: str, weights: str, data: str, out: Path, *flags: str) -> dict:
    """Run `geo-eval COMMAND` as a subprocess, echo its summary line, return its JSON result."""
    cmd = [sys.executable, "-m", "geo_ssl.training.evaluation.cli", command, "--weights", weights,
           "--data", data, "--out", str(out), *flags]  # fmt: skip
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"finetune_vs_probe: {' '.join(cmd[3:])} failed:\n{proc.stderr[-3000:]}")
    print(f"$ geo-eval {' '.join(cmd[3:])}\n{proc.stdout.strip()}  [{time.time() - t0:.0f} s]")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="finetune-vs-probe-out")
    p.add_argument("--locations", type=int, default=300)
    p.add_argument("--steps", type=int, default=300, help="moco pretraining steps")
    p.add_argument("--ft-epochs", type=int, default=15)
    p.add_argument("--ft-lr", type=float, default=0.08, help="finetune lr per batch of 256 (x 32/256 here)")
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault("GEO_SSL_PROGRESS", "0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    data = build_data(out, args.locations, 8, 0, TOY_CATEGORIES, resize=64, scene="toy")
    recipe = argparse.Namespace(  # the ablation's defaults (tests/bench/ablation.py main)
        image_size=64, batch_size=32, queue=128, momentum=0.95, temperature=0.2, head_bn=True, crop_scale=0.4,
        amp="bf16" if cpu_has_bf16() else "off", lr=0.015, epochs=3, steps=args.steps, workers=args.workers,
        seed=0, epoch_samples=args.steps // 3 * 32,
    )  # fmt: skip
    cfg = run_config(data, out, "moco", recipe)
    pretrain_s = pretrain_once(cfg)
    ckpt = os.path.join(cfg.out, "checkpoint-last.pt")
    common = ["--image-size", "64", "--num-workers", str(args.workers)]
    probe = geo_eval("linear-probe", ckpt, data, out / "probe.json", *common, "--batch-size", "64")
    ft = geo_eval(
        "finetune", ckpt, data, out / "finetune.json", *common, "--batch-size", "32", "--epochs",
        str(args.ft_epochs), "--lr", str(args.ft_lr), "--crop-scale", "0.4", "--schedule", "cosine",
    )  # fmt: skip
    rows = [("linear probe (frozen)", probe), ("finetune (whole network)", ft)]
    print(f"\nmoco, {args.steps} steps ({pretrain_s:.0f} s), {args.locations} toy locations, "
          f"val: {ft['n_val']} views of {ft['locations']} locations")  # fmt: skip
    print("| evaluation | top-1 | macro F1 | per-location top-1 | figure from |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        cells = " | ".join(f"{r[k]:.1f}%" if r[k] is not None else "n/a" for k in FIGURES)
        print(f"| {name} | {cells} | {r['reported']} |")
    print(
        f"(probe best epoch on val, GASSL's figure: {probe['best_epoch_top1']:.1f}% at epoch {probe['best_epoch']})"
    )
    verdict = "beats" if ft["top1"] > probe["top1"] else "does NOT beat"
    print(f"finetune {verdict} the linear probe on top-1 ({ft['top1']:.1f}% vs {probe['top1']:.1f}%); "
          f"total {time.time() - t_start:.0f} s")  # fmt: skip
    summary = {"steps": args.steps, "locations": args.locations, "probe": probe, "finetune": ft}
    (out / "finetune_vs_probe.json").write_text(json.dumps(summary, indent=1, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
