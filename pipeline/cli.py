"""`geo-build-dataset`: a thin argparse shim over the stage functions; user mistakes exit 2 on one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from geo_ssl.pipeline import __version__
from geo_ssl.pipeline.common.checks import positive_int_arg, seed_arg
from geo_ssl.pipeline.common.cli_args import OneLineParser
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.executor import add_executor_flags
from geo_ssl.pipeline.common.logs import add_verbosity_flags, set_verbosity
from geo_ssl.pipeline.common.storage import redact
from geo_ssl.pipeline.fmow import commands as fmow_commands
from geo_ssl.pipeline.geoimagenet import commands as geoimagenet_commands

#: The data sources and their command modules (COMMANDS, add_parsers, run_command, add_build_flags,
#: run_build); the first is `build`'s default.
SOURCES = {"fmow": fmow_commands, "geoimagenet": geoimagenet_commands}


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


def _shard_kwargs(args: argparse.Namespace) -> dict:
    keys = ("resize", "context", "quality", "shard_bytes", "workers", "upscale", "dct", "seed", "layout")
    out = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if getattr(args, "splits", None) is not None:
        out["splits"] = tuple(s.strip() for s in args.splits.split(",") if s.strip())
        if not out["splits"]:
            raise GeoSSLError(f"--splits {args.splits!r} names no split; give e.g. --splits train,val")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="geo-build-dataset",
        description="Turn fMoW-rgb into clustered WebDataset shards of temporal tuples for geo-aware SSL.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fmow_commands.add_parsers(sub)  # the fMoW source's commands first, the shared ones, then GeoImageNet's
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
    add_executor_flags(p)

    p = sub.add_parser("build", help="index, cluster and write shards in one resumable run")
    p.add_argument("--config", default=None, help="TOML config file; flags override it")
    p.add_argument("--root", default=None, help="fMoW-rgb root")
    p.add_argument("--out", default=None, help="build folder (default: shards/)")
    p.add_argument("--k", type=positive_int_arg, default=None, help="number of geo clusters (default 100)")
    p.add_argument("--seed", type=seed_arg, default=None)
    p.add_argument("--rebuild", action="store_true",
                   help="replace a build of other settings (root, kind, k, seed, shard options) found in "
                        "--out (default: refuse)")  # fmt: skip
    p.add_argument("--source", choices=tuple(SOURCES), default=None,
                   help="data set to build (default fmow, or `source` in the config)")  # fmt: skip
    _add_shard_flags(p)
    add_executor_flags(p)
    for source in SOURCES.values():
        source.add_build_flags(p)

    p = sub.add_parser("validate", help="re-read every shard against the manifest and report")
    p.add_argument("out", help="build folder or shard folder")
    p.add_argument("--workers", type=int, default=None)

    p = sub.add_parser(
        "report", help="PNG plots: world map by cluster, views per location, per category/cluster"
    )
    p.add_argument("out", help="build folder")
    p.add_argument("--index", default=None, help="index folder (default: OUT/index)")
    p.add_argument("--plots", default=None, help="where to write PNGs (default: OUT/report)")

    geoimagenet_commands.add_parsers(sub)
    from geo_ssl.pipeline.common.storage import add_storage_flags

    for subparser in sub.choices.values():  # every subcommand takes the same storage flags
        add_storage_flags(subparser)
        add_verbosity_flags(subparser)
    return parser


def build_source(args: argparse.Namespace) -> str:
    """The data set `build` makes: --source, else the config file's `source` key, else fmow (a config
    naming no known source goes to the fMoW build, which names the key it does not take)."""
    if args.source:
        return args.source
    if args.config:
        from geo_ssl.pipeline.geoimagenet.build import read_config  # the TOML reader, errors naming the file

        source = read_config(args.config).get("source")
        if isinstance(source, str) and source in SOURCES:
            return source
    return "fmow"


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_verbosity(args)
    cmd = args.command
    from geo_ssl.pipeline.common import storage

    storage.configure_from_args(args)  # before any file is opened; workers inherit it through the env
    if hasattr(args, "executor"):
        from geo_ssl.pipeline.common import executor

        executor.configure(args.executor, args.scheduler)
    for source in SOURCES.values():
        if cmd in source.COMMANDS:
            return source.run_command(args)
    if cmd == "build":
        return SOURCES[build_source(args)].run_build(args, _shard_kwargs(args))
    if cmd == "cluster":
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
