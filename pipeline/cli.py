"""`geo-build-dataset`: a thin argparse shim over the stage functions; user mistakes exit 2 on one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from geo_ssl.pipeline import __version__
from geo_ssl.pipeline.common.checks import positive_int_arg, seed_arg
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.storage import redact


def _add_shard_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("shard writing")
    g.add_argument(
        "--resize", type=int, default=None, help="shorter side of stored views in px (default 448)"
    )
    g.add_argument(
        "--context", default=None, help="margin around the box: auto (default), none, or a fraction"
    )
    g.add_argument("--quality", type=int, default=None, help="JPEG quality of stored views (default 90)")
    g.add_argument("--shard-bytes", default=None, help="target shard size, e.g. 256MB (default)")
    g.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    g.add_argument(
        "--upscale", action="store_true", default=None, help="also enlarge crops smaller than --resize"
    )
    g.add_argument(
        "--no-dct", dest="dct", action="store_false", default=None, help="always decode at full size"
    )
    g.add_argument("--splits", default=None, help="comma-separated splits to write (default: all)")
    g.add_argument(
        "--layout", choices=("locations", "views"), default=None,
        help="locations: one sample per location with all its views (default); "
        "views: one sample per view with fixed members jpg, json, cls (Hugging Face datasets reads it)",
    )  # fmt: skip


def _add_executor_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where tasks run")
    g.add_argument("--executor", choices=("process", "dask"), default=None,
                   help="process pool (default) or Dask (env GEO_SSL_EXECUTOR)")  # fmt: skip
    g.add_argument("--scheduler", default=None, metavar="URL",
                   help="existing Dask scheduler, e.g. tcp://host:8786 (default: a LocalCluster of --workers; "
                        "env GEO_SSL_SCHEDULER)")  # fmt: skip


def _shard_kwargs(args: argparse.Namespace) -> dict:
    keys = ("resize", "context", "quality", "shard_bytes", "workers", "upscale", "dct", "seed", "layout")
    out = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if getattr(args, "splits", None) is not None:
        out["splits"] = tuple(s.strip() for s in args.splits.split(",") if s.strip())
        if not out["splits"]:
            raise GeoSSLError(f"--splits {args.splits!r} names no split; give e.g. --splits train,val")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geo-build-dataset",
        description="Turn fMoW-rgb into clustered WebDataset shards of temporal tuples for geo-aware SSL.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    _add_executor_flags(p)

    p = sub.add_parser(
        "index-fmow", help="index an fMoW-rgb tree into GeoParquet (images, locations, rejects)"
    )
    p.add_argument("--root", required=True, help="fMoW-rgb root holding train/, val/, ... (local or URL)")
    p.add_argument("--out", required=True, help="index folder to write")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument(
        "--kind", choices=("rgb", "msrgb"), default="rgb", help="which images to index (default rgb)"
    )
    _add_executor_flags(p)

    p = sub.add_parser("cluster", help="K-means geo pseudo-labels over unique locations on the sphere")
    p.add_argument("--index", required=True, help="index folder from index-fmow")
    p.add_argument("--k", type=positive_int_arg, default=100,
                   help="number of clusters (default 100, as in the paper)")  # fmt: skip
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--out", default=None, help="where to write clusters (default: the index folder)")
    p.add_argument("--minibatch-threshold", type=int, default=50_000,
                   help="use MiniBatchKMeans above this many train locations (default 50000)")  # fmt: skip

    p = sub.add_parser("write-shards", help="write WebDataset tar shards, one sample per location")
    p.add_argument("--index", required=True, help="index folder (with clusters.parquet from `cluster`)")
    p.add_argument("--clusters", default=None, help="folder holding clusters.parquet (default: --index)")
    p.add_argument("--out", default="shards", help="output folder (default: shards/)")
    p.add_argument("--seed", type=seed_arg, default=None, help="shuffle seed (default 0)")
    _add_shard_flags(p)
    _add_executor_flags(p)

    p = sub.add_parser("build", help="index, cluster and write shards in one resumable run")
    p.add_argument("--config", default=None, help="TOML config file; flags override it")
    p.add_argument("--root", default=None, help="fMoW-rgb root")
    p.add_argument("--out", default=None, help="build folder (default: shards/)")
    p.add_argument("--k", type=positive_int_arg, default=None, help="number of geo clusters (default 100)")
    p.add_argument("--seed", type=seed_arg, default=None)
    p.add_argument("--rebuild", action="store_true",
                   help="replace a build of other settings (root, kind, k, seed, shard options) found in "
                        "--out (default: refuse)")  # fmt: skip
    _add_shard_flags(p)
    _add_executor_flags(p)
    from geo_ssl.pipeline.geoimagenet.commands import add_build_flags

    add_build_flags(p)

    p = sub.add_parser("validate", help="re-read every shard against the manifest and report")
    p.add_argument("out", help="build folder or shard folder")
    p.add_argument("--workers", type=int, default=None)

    p = sub.add_parser(
        "report", help="PNG plots: world map by cluster, views per location, per category/cluster"
    )
    p.add_argument("out", help="build folder")
    p.add_argument("--index", default=None, help="index folder (default: OUT/index)")
    p.add_argument("--plots", default=None, help="where to write PNGs (default: OUT/report)")

    from geo_ssl.pipeline.geoimagenet.commands import add_parsers as add_geoimagenet_parsers

    add_geoimagenet_parsers(sub)
    from geo_ssl.pipeline.common.storage import add_storage_flags

    for subparser in sub.choices.values():  # every subcommand takes the same storage flags
        add_storage_flags(subparser)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cmd = args.command
    from geo_ssl.pipeline.common import storage

    storage.configure_from_args(args)  # before any file is opened; workers inherit it through the env
    if hasattr(args, "executor"):
        from geo_ssl.pipeline.common import executor

        executor.configure(args.executor, args.scheduler)
    from geo_ssl.pipeline.geoimagenet import commands as geoimagenet_commands

    if cmd in geoimagenet_commands.COMMANDS:
        return geoimagenet_commands.run_command(args)
    if cmd == "synth-fmow":
        from geo_ssl.pipeline.fmow.synth import synth_fmow

        summary = synth_fmow(
            args.out, locations=args.locations, seed=args.seed, val_fraction=args.val_fraction,
            realistic_sizes=args.realistic_sizes, workers=args.workers, scene=args.scene,
        )  # fmt: skip
        print(summary.line())
    elif cmd == "index-fmow":
        from geo_ssl.pipeline.fmow.index import index_fmow

        summary = index_fmow(args.root, args.out, workers=args.workers, kind=args.kind)
        print(summary.line())
    elif cmd == "cluster":
        from geo_ssl.pipeline.cluster import cluster

        stats = cluster(args.index, k=args.k, seed=args.seed, out=args.out,
                        minibatch_threshold=args.minibatch_threshold)  # fmt: skip
        print(stats["line"])
    elif cmd == "write-shards":
        from geo_ssl.pipeline.shards.options import ShardOptions
        from geo_ssl.pipeline.shards.write import write_shards

        summary = write_shards(
            args.index, args.out, clusters=args.clusters, options=ShardOptions(**_shard_kwargs(args))
        )
        print(summary.line())
    elif cmd == "build" and geoimagenet_commands.wants_geoimagenet(args):
        return geoimagenet_commands.run_build(args, _shard_kwargs(args))
    elif cmd == "build":
        from geo_ssl.pipeline.build import build, load_build_config

        config = load_build_config(
            args.config, root=args.root, out=args.out, k=args.k, shard=_shard_kwargs(args)
        )
        build(config, rebuild=args.rebuild)
    elif cmd == "validate":
        from geo_ssl.pipeline.shards.validate import validate

        report = validate(args.out, workers=args.workers)
        print(report.line())
        return 0 if report.ok else 1
    elif cmd == "report":
        from geo_ssl.pipeline.common.fsio import check_output_dir, join
        from geo_ssl.pipeline.report import report

        check_output_dir(args.plots or join(args.out, "report"), "--plots")
        for path in report(args.out, index=args.index, plots=args.plots):
            print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    try:
        code = run(argv)
    except GeoSSLError as exc:
        print(f"geo-build-dataset: error: {redact(str(exc))}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("geo-build-dataset: interrupted; rerun the same command to resume", file=sys.stderr)
        code = 130
    except Exception as exc:  # storage outages, bad output paths: one line (codes in common/retry.py)
        from geo_ssl.pipeline.common.retry import explain_failure

        explained = explain_failure(exc)
        if explained is None:
            raise
        print(f"geo-build-dataset: error: {redact(explained[0])}", file=sys.stderr)
        code = explained[1]
    sys.exit(code)


if __name__ == "__main__":
    main()
