"""`geo-eval`: evaluation of a pretrained backbone on the shards' category labels.

    geo-eval linear-probe --weights RUN/checkpoint-last.pt --data SHARDS [--epochs 100 --lr 1 ...]
    geo-eval finetune --weights RUN/checkpoint-last.pt --data SHARDS [--epochs 100 --lr 0.001 ...]
    geo-eval knn --weights backbone.pth --data SHARDS [--k 200 --t 0.1]

--weights takes a geo-pretrain checkpoint, an exported backbone, an official MoCo / GASSL checkpoint,
or `random` (with --arch) for the random-init baseline. Each prints top-1, macro F1 and the per-location
top-1 (a location's views vote; n/a where every location has one view) and writes a JSON result that
also says which epoch the figure is from (linear-probe, finetune: the last).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from geo_ssl.pipeline import __version__
from geo_ssl.pipeline.common import fsio, storage
from geo_ssl.pipeline.common.cli_args import OneLineParser
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.logs import add_verbosity_flags, set_verbosity
from geo_ssl.pipeline.common.retry import EXIT_USAGE, explain_failure, retry_io
from geo_ssl.training.trainer.config import ARCH_NAMES
from geo_ssl.training.trainer.run_folder import output_problem

# torch and the models are imported in evaluate(), after check_args: a wrong flag costs no torch import.

#: Input size when neither --image-size nor the weights say one (the official MoCo / GASSL crop).
DEFAULT_IMAGE_SIZE = 224


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights", required=True, help="checkpoint, exported backbone, MoCo/GASSL .pth.tar, or 'random'"
    )
    p.add_argument("--arch", choices=ARCH_NAMES, default=None, help="default: inferred from the weights")
    p.add_argument("--data", required=True, help="shard folder (or pattern) holding the evaluation splits")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size in px (default: the trained size the checkpoint or its export card records, "
                        f"else {DEFAULT_IMAGE_SIZE})")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--all-views", action=argparse.BooleanOptionalAction, default=True,
                   help="every view of a location is an image (default); --no-all-views: one per location")  # fmt: skip
    p.add_argument("--out", default=None, help="JSON result file (default: print only)")
    p.add_argument("--trust", action="store_true", help="load with weights_only=False (only files you trust)")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first corrupt or missing sample (default: skip it, count it, report it)")  # fmt: skip
    storage.add_storage_flags(p)  # --weights, --data and --out may be s3:// etc. URLs
    add_verbosity_flags(p)


EPILOG = (
    "exit status: 0 done, 2 bad flag or input (one line on stderr), 3 object storage kept failing after "
    "retries (one line; rerun when it answers)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="geo-eval", description=__doc__.split("\n\n")[0], epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "linear-probe",
        help="train a linear classifier on frozen features (MoCo/GASSL protocol)",
        epilog=EPILOG,
    )
    _common(p)
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=1.0,
                   help="base lr for a batch of 256, scaled by --probe-batch-size/256 (default 1.0, GASSL; MoCo used 30)")  # fmt: skip
    p.add_argument("--probe-batch-size", type=int, default=256, help="batch of the linear classifier")
    p.add_argument(
        "--schedule", choices=("step", "cosine"), default="step", help="x0.1 at 60%%/80%%, or cosine"
    )
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--max-train", type=int, default=0, help="cap on training images (0 = all)")
    p.add_argument("--max-val", type=int, default=0, help="cap on validation images (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    _same_split_flag(p, "--val-split", "--train-split")
    p = sub.add_parser(
        "finetune",
        help="train the whole network and a new fc on the train split (GASSL's fine-tune protocol)",
        epilog=EPILOG,
    )
    _common(p)  # --batch-size is the training batch too (GASSL: 256)
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.001,
                   help="lr for a batch of 256, scaled by --batch-size/256 (default 0.001, GASSL's fine-tune)")  # fmt: skip
    p.add_argument(
        "--schedule", choices=("step", "cosine"), default="step", help="x0.1 at 60%%/80%%, or cosine"
    )
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--bn", choices=("frozen", "train"), default="frozen",
                   help="frozen: BatchNorm keeps the pretrained statistics (GASSL trains in eval mode); "
                        "train: BN updates them")  # fmt: skip
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="MoCo-v2 augmentation of train images (default); --no-augment: the eval transform")  # fmt: skip
    p.add_argument("--crop-scale", type=float, default=0.0,
                   help="smallest random crop, a fraction of the view (0 = MoCo-v2's 0.2)")  # fmt: skip
    p.add_argument("--num-classes", type=int, default=0,
                   help="outputs of the new fc (0 = the largest category id in DATA/dataset.json + 1)")  # fmt: skip
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0 = all epochs)")
    p.add_argument("--max-val", type=int, default=0, help="cap on validation images (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    _same_split_flag(p, "--val-split", "--train-split")
    p = sub.add_parser("knn", help="weighted kNN (cosine) with the bank split's labels", epilog=EPILOG)
    _common(p)
    p.add_argument("--bank-split", default="train")
    p.add_argument("--query-split", default="val")
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--t", type=float, default=0.1)
    p.add_argument("--max-bank", type=int, default=0, help="cap on bank images (0 = all)")
    p.add_argument("--max-query", type=int, default=0, help="cap on query images (0 = all)")
    _same_split_flag(p, "--query-split", "--bank-split")
    return parser


def _same_split_flag(p: argparse.ArgumentParser, held_out: str, fitted: str) -> None:
    p.add_argument("--allow-same-split", action="store_true",
                   help=f"let {held_out} equal {fitted} (a smoke test on data with one split: the images "
                        "scored are the ones fitted, so top-1 says nothing about the features)")  # fmt: skip


def _splits(args: argparse.Namespace) -> tuple[tuple[str, str], tuple[str, str]]:
    """((flag, split) fitted on, (flag, split) scored) of the command."""
    if args.command in ("linear-probe", "finetune"):
        return ("--train-split", args.train_split), ("--val-split", args.val_split)
    return ("--bank-split", args.bank_split), ("--query-split", args.query_split)


def _same_split(args: argparse.Namespace) -> bool:
    (_, fit), (_, score) = _splits(args)
    return fit == score


def _loader(args: argparse.Namespace, split: str):
    from geo_ssl.training.data.loader import eval_loader

    loader = eval_loader(
        args.data, image_size=args.image_size, batch_size=args.batch_size, num_workers=args.num_workers,
        split=split, all_views=args.all_views, strict=getattr(args, "strict", False),
    )  # fmt: skip
    args.__dict__.setdefault("_loaders", []).append(loader)  # their skip counts go into the result
    return loader


def check_args(args: argparse.Namespace) -> None:
    """Every impossible flag value, and an --out that cannot be written, before any work (one line each)."""

    def bad(flag: str, value: Any, rule: str) -> None:
        raise GeoSSLError(f"{flag} {value}: {rule}")

    if args.batch_size <= 0:
        bad("--batch-size", args.batch_size, "must be > 0")
    if args.image_size is not None and args.image_size < 32:
        bad("--image-size", args.image_size, "must be >= 32")
    if args.num_workers < 0:
        bad("--num-workers", args.num_workers, "must be >= 0")
    ints = {
        "linear-probe": ("max_train", "max_val"),
        "finetune": ("max_steps", "max_val", "num_classes"),
        "knn": ("max_bank", "max_query"),
    }[args.command]
    for name in ints:
        if getattr(args, name) < 0:
            bad("--" + name.replace("_", "-"), getattr(args, name), "must be >= 0 (0 = all)")
    if args.command == "knn":
        if args.k < 1:
            bad("--k", args.k, "must be >= 1 (neighbours)")
        if not (math.isfinite(args.t) and args.t > 0):
            bad("--t", args.t, "must be a finite number > 0 (vote temperature)")
    else:
        if args.epochs <= 0:
            bad("--epochs", args.epochs, "must be > 0")
        if not (math.isfinite(args.lr) and args.lr > 0):
            bad("--lr", args.lr, "must be a finite number > 0")
        if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
            bad("--weight-decay", args.weight_decay, "must be a finite number >= 0")
        if args.command == "linear-probe" and args.probe_batch_size <= 0:
            bad("--probe-batch-size", args.probe_batch_size, "must be > 0")
        if args.command == "finetune" and not 0 <= args.crop_scale <= 1:
            bad("--crop-scale", args.crop_scale, "must be in (0, 1], or 0 for MoCo-v2's 0.2")
    (fit_flag, _), (score_flag, score) = _splits(args)
    if _same_split(args) and not args.allow_same_split:
        # kNN: every query is its own nearest neighbour (top-1 jumped from 0% to 84.9%); linear probe:
        # training accuracy. Neither measures the features on held-out images.
        raise GeoSSLError(
            f"{score_flag} {score}: the same split as {fit_flag}, so every scored image was also fitted on "
            f"and top-1 is meaningless; give a held-out split, or --allow-same-split for a smoke test"
        )
    if args.out:
        if not fsio.is_local(args.out):  # object storage: written in one PUT at the end; reachable now?
            retry_io(lambda: fsio.exists(args.out), f"--out {args.out}: checking the bucket")
            return
        problem = output_problem(args.out, folder=False)
        if problem:
            raise GeoSSLError(f"--out {args.out}: {problem}")
    if args.weights != "random" and fsio.is_local(args.weights) and os.path.isdir(args.weights):
        raise GeoSSLError(f"--weights {args.weights}: is a folder; give a checkpoint file")


def _card_input_size(weights: str) -> tuple[int, str] | None:
    """(size, file) from an export's card beside the weights: WEIGHTS.json's preprocessing, or a timm-style
    config.json's pretrained_cfg (a .pth export records nothing inside the weights)."""
    for card in (weights + ".json", fsio.join(os.path.dirname(weights) or ".", "config.json")):
        try:
            data = json.loads(fsio.read_bytes(card))
        except (OSError, ValueError):  # absent, unreadable or not JSON: not a card
            continue
        if not isinstance(data, dict):
            continue
        for holder in (data.get("preprocessing"), data.get("pretrained_cfg"), data):
            if isinstance(holder, dict) and holder.get("file") not in (None, os.path.basename(weights)):
                continue  # a config.json shared by several exports in one folder: another one's
            size = holder.get("input_size") if isinstance(holder, dict) else None
            if isinstance(size, list) and size and isinstance(size[-1], int):
                return size[-1], os.path.basename(card)
    return None


def input_size(weights: str, meta: dict[str, Any], requested: int | None) -> dict[str, Any]:
    """The input size to evaluate at: --image-size, else the trained size (checkpoint config, export metadata
    or card), else DEFAULT_IMAGE_SIZE. A backbone evaluated at another size than it was trained at scores
    lower for a reason that is not its features, so an explicit different size gets a note.

    Returns {"image_size", "source", "trained" (None when unknown), "note" (None or one line)}."""
    trained, where = meta.get("image_size"), "the checkpoint"
    if not trained and weights != "random":
        found = _card_input_size(weights)
        if found:
            trained, where = found[0], found[1]
    trained = int(trained) if trained else None
    if requested is not None:
        note = None
        if trained and requested != trained:
            note = (f"--image-size {requested}: evaluating at {requested} px, but the backbone was trained "
                    f"at {trained} px ({where}); omit --image-size to use {trained}")  # fmt: skip
        return {"image_size": requested, "source": "--image-size", "trained": trained, "note": note}
    if trained:
        return {"image_size": trained, "source": where, "trained": trained, "note": None}
    return {"image_size": DEFAULT_IMAGE_SIZE, "source": "default", "trained": None, "note": None}


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen evaluation; returns the JSON-able result."""
    import torch

    from geo_ssl.training.evaluation.export import load_backbone
    from geo_ssl.training.evaluation.linear_probe import linear_probe
    from geo_ssl.training.models.backbone import FeatureExtractor
    from geo_ssl.training.models.knn import extract_features, knn_top1

    check_args(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resnet, meta = load_backbone(args.weights, arch=args.arch, trusted=args.trust)
    size = input_size(args.weights, meta, args.image_size)
    args.image_size = size["image_size"]
    if size["note"]:
        print(f"geo-eval: note: {size['note']}", file=sys.stderr)
    extractor = FeatureExtractor(resnet).to(device)
    t0 = time.time()
    if args.command == "linear-probe":
        lr = args.lr * args.probe_batch_size / 256
        result = linear_probe(
            extractor, _loader(args, args.train_split), _loader(args, args.val_split), device,
            max_train=args.max_train, max_val=args.max_val, epochs=args.epochs, lr=lr,
            batch_size=args.probe_batch_size, schedule=args.schedule, weight_decay=args.weight_decay,
            seed=args.seed,
        )  # fmt: skip
        result.update(lr=lr, epochs=args.epochs, schedule=args.schedule, train_split=args.train_split,
                      val_split=args.val_split)  # fmt: skip
    elif args.command == "finetune":
        result = _finetune(args, resnet, device)
    else:
        bank = extract_features(extractor, _loader(args, args.bank_split), device, max_samples=args.max_bank,
                                desc="bank features")  # fmt: skip
        query = extract_features(extractor, _loader(args, args.query_split), device, max_samples=args.max_query,
                                 desc="query features")  # fmt: skip
        if len(bank.labels) == 0 or len(query.labels) == 0:
            raise GeoSSLError(f"{args.data}: split {args.bank_split!r} or {args.query_split!r} has no images")
        result = knn_top1(bank, query, k=args.k, T=args.t)
        result.update(bank_split=args.bank_split, query_split=args.query_split)
    result.update(
        eval=args.command, weights=args.weights, data=args.data, image_size=args.image_size,
        image_size_from=size["source"], trained_image_size=size["trained"],
        seconds=round(time.time() - t0, 2), backbone=meta,
    )  # fmt: skip
    if _same_split(args):
        result["same_split"] = True  # --allow-same-split: the JSON says so too
    loaders = args.__dict__.get("_loaders", [])
    result.update(skipped_samples=sum(ld.stats.corrupt for ld in loaders),
                  skipped_errors=[e for ld in loaders for e in ld.stats.errors][:5])  # fmt: skip
    return result


def _finetune(args: argparse.Namespace, resnet: Any, device: Any) -> dict[str, Any]:
    from geo_ssl.training.data.gassl_crop import augment_for
    from geo_ssl.training.data.loader import LoaderConfig, views_loader
    from geo_ssl.training.evaluation.finetune import card_classes, finetune

    n_classes = args.num_classes or card_classes(args.data)
    if not n_classes:
        raise GeoSSLError(f"--data {args.data}: no dataset.json listing the categories; give --num-classes")
    cfg = LoaderConfig(
        urls=args.data, split=args.train_split, batch_size=args.batch_size, image_size=args.image_size,
        temporal=False, augment=args.augment, num_workers=args.num_workers, seed=args.seed,
        strict=args.strict, epoch_unit="image",
        augmentation=augment_for("moco", args.image_size, args.crop_scale),  # MoCo-v2's (finetune.py)
    )  # fmt: skip
    train = views_loader(cfg, n_views=1)  # one augmented view of each image per epoch (GASSL's epoch)
    args.__dict__.setdefault("_loaders", []).append(train)
    lr = args.lr * args.batch_size / 256
    result = finetune(
        resnet, train, _loader(args, args.val_split), device, n_classes, epochs=args.epochs, lr=lr,
        weight_decay=args.weight_decay, schedule=args.schedule, bn=args.bn, max_steps=args.max_steps,
        max_val=args.max_val, seed=args.seed,
    )  # fmt: skip
    result.update(lr=lr, epochs=args.epochs, schedule=args.schedule, batch_size=args.batch_size, bn=args.bn,
                  augment=args.augment, train_split=args.train_split, val_split=args.val_split)  # fmt: skip
    return result


def _fail(message: str, code: int) -> NoReturn:
    print(f"geo-eval: error: {storage.redact(message)}", file=sys.stderr)
    sys.exit(code)


def _write_result(out: str, result: dict[str, Any]) -> None:
    text = json.dumps(result, indent=1, sort_keys=True, default=str) + "\n"
    if not fsio.is_local(out):  # an upload: retried, then StorageError (exit 3)
        retry_io(lambda: fsio.atomic_write_text(out, text), f"--out {out}: writing the result")
        return
    try:
        fsio.atomic_write_text(out, text)
    except OSError as exc:
        raise GeoSSLError(f"--out {out}: cannot write the result ({exc.strerror or exc})") from None


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    set_verbosity(args)
    try:
        storage.configure_from_args(args)
        check_args(args)
        if _same_split(args):
            print("geo-eval: warning: --allow-same-split: the scored images are the fitted ones; "
                  "top-1 says nothing about held-out images", file=sys.stderr)  # fmt: skip
        result = evaluate(args)
        if args.out:
            _write_result(args.out, result)
    except (GeoSSLError, ValueError) as exc:  # a shard the store did not serve (ShardReadError): exit 3
        _fail(str(exc), getattr(exc, "exit_code", EXIT_USAGE))
    except Exception as exc:  # storage down or refusing the credentials: one line (codes in retry.py)
        explained = explain_failure(exc)
        if explained is None:
            raise
        _fail(*explained)
    where = f" -> {args.out}" if args.out else ""
    if result.get("skipped_samples"):
        print(f"geo-eval: skipped {result['skipped_samples']} unreadable samples "
              f"(first: {result['skipped_errors'][0]}); --strict stops at the first", file=sys.stderr)  # fmt: skip
    from geo_ssl.training.models.metrics import format_report

    epoch = f", {result['reported']}" if "reported" in result else ""
    n = result.get("n_val", result.get("query"))
    print(f"{args.command} {format_report(result)} ({n} images{epoch}){where}")


if __name__ == "__main__":
    main()
