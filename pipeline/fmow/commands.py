"""The fMoW subcommands of `geo-build-dataset` (parsers and dispatch) and its `build`, kept beside their
code as GeoImageNet's are: `pipeline/cli.py` only wires the sources and the commands they share."""

from __future__ import annotations

import argparse

from geo_ssl.pipeline.common.executor import add_executor_flags
from geo_ssl.pipeline.common.logs import STDOUT, get_logger

COMMANDS = ("synth-fmow", "index-fmow")
log = get_logger(__name__)


def add_parsers(sub) -> None:
    """Add synth-fmow and index-fmow to the top-level subparsers."""
    p = sub.add_parser("synth-fmow", help="write a small synthetic data set in the exact fMoW-rgb layout")
    p.add_argument("--out", required=True, help="output root (gets train/ and val/)")
    p.add_argument("--locations", type=int, default=300, help="number of locations (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of locations in val (default 0.2)")
    p.add_argument(
        "--realistic-sizes", action="store_true", help="realistic pixel and byte sizes (benchmarks)"
    )
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument(
        "--scene", choices=("fmow", "toy"), default="fmow",
        help="fmow (default): a ground pattern and roads per location; toy: the ablation's test, one ground "
        "pattern per biome, no roads, 2.5x wider object strokes (shapes survive 64 px)",
    )  # fmt: skip
    add_executor_flags(p)

    p = sub.add_parser(
        "index-fmow", help="index an fMoW-rgb tree into GeoParquet (images, locations, rejects)"
    )
    p.add_argument("--root", required=True, help="fMoW-rgb root holding train/, val/, ... (local or URL)")
    p.add_argument("--out", required=True, help="index folder to write")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument(
        "--kind", choices=("rgb", "msrgb"), default="rgb", help="which images to index (default rgb)"
    )
    add_executor_flags(p)


def run_command(args: argparse.Namespace) -> int:
    """Run one fMoW subcommand; logs its summary line (to stdout)."""
    if args.command == "synth-fmow":
        from geo_ssl.pipeline.fmow.synth import synth_fmow

        summary = synth_fmow(
            args.out, locations=args.locations, seed=args.seed, val_fraction=args.val_fraction,
            realistic_sizes=args.realistic_sizes, workers=args.workers, scene=args.scene,
        )  # fmt: skip
        log.info(summary.line(), extra=STDOUT)
    elif args.command == "index-fmow":
        from geo_ssl.pipeline.fmow.index import index_fmow

        summary = index_fmow(args.root, args.out, workers=args.workers, kind=args.kind)
        log.info(summary.line(), extra=STDOUT)
    return 0


def add_build_flags(p: argparse.ArgumentParser) -> None:
    """Flags of `build` for the fMoW chain: none beyond the shared ones (--root, --k, shard options)."""


def run_build(args: argparse.Namespace, shard: dict) -> int:
    """`build --source fmow`: index-fmow, cluster and write-shards in one resumable run."""
    from geo_ssl.pipeline.build import build, load_build_config

    config = load_build_config(args.config, root=args.root, out=args.out, k=args.k, shard=shard)
    build(config, rebuild=args.rebuild)
    return 0
