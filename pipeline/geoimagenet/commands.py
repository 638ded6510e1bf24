"""The GeoImageNet subcommands of `geo-build-dataset` (parsers and dispatch) and its `build`, kept beside
their code as fMoW's are (pipeline/fmow/commands.py); `--source` itself is pipeline/cli.py's."""

from __future__ import annotations

import argparse
import signal

from geo_ssl.pipeline.common.checks import positive_int_arg, seed_arg
from geo_ssl.pipeline.common.logs import STDOUT, get_logger

COMMANDS = ("harvest-flickr", "synth-imagenet", "index-imagenet")
log = get_logger(__name__)
#: flickrapi's FlickrAPI.REST_URL (not imported here: building the parser must stay cheap).
DEFAULT_API_URL = "https://api.flickr.com/services/rest/"


def add_parsers(sub) -> None:
    """Add harvest-flickr, synth-imagenet and index-imagenet to the top-level subparsers."""
    p = sub.add_parser(
        "harvest-flickr",
        help="GeoImageNet: Flickr coordinates for the photos of an ImageNet URL list (resumable, rate-limited)",
    )
    p.add_argument(
        "--urls", required=True, help="URL list in fall11_urls.txt format ({wnid}_{index}<TAB>{url})"
    )
    p.add_argument("--out", required=True, help="harvest folder (results/, flickr_geo.parquet, summaries)")
    p.add_argument(
        "--credentials",
        default=None,
        metavar="FILE",
        help="file with the Flickr key and secret (default: env FLICKR_API_KEY, FLICKR_API_SECRET)",
    )
    p.add_argument("--api-url", default=DEFAULT_API_URL, help=f"REST endpoint (default {DEFAULT_API_URL})")
    p.add_argument(
        "--rate-limit", type=float, default=3600.0, help="calls per hour, never exceeded (default 3600)"
    )
    p.add_argument("--concurrency", type=int, default=4, help="calls in flight (default 4)")
    p.add_argument(
        "--yfcc",
        default=None,
        metavar="FILE",
        help="YFCC100M metadata dump (25-column TSV) to join first; only the rest is asked",
    )
    p.add_argument("--batch", type=int, default=500, help="results per Parquet part (default 500)")
    p.add_argument(
        "--max-attempts", type=int, default=6, help="HTTP calls per photo before leaving it (default 6)"
    )
    p.add_argument("--retry-base", type=float, default=2.0, help="backoff base in seconds (default 2)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP call (default 30)")
    p.add_argument("--limit", type=int, default=None, help="ask at most this many photos in this run")
    p.add_argument("--flush-seconds", type=float, default=60.0, help="write a part at least this often (default 60)")  # fmt: skip

    p = sub.add_parser(
        "synth-imagenet", help="GeoImageNet: a small ImageNet tree, URL list, YFCC dump, photo table"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--classes", type=int, default=8, help="number of classes (default 8)")
    p.add_argument(
        "--images-per-class", type=positive_int_arg, default=24, help="images per class (default 24)"
    )
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument(
        "--words", default=None, help="ImageNet words.txt for class names (default: built-in list)"
    )

    p = sub.add_parser("index-imagenet", help="GeoImageNet: join harvested coordinates with an ImageNet tree")
    p.add_argument("--root", required=True, help="ImageNet tree {wnid}/{wnid}_{index}.JPEG (local or URL)")
    p.add_argument("--harvest", required=True, help="harvest folder from harvest-flickr")
    p.add_argument("--out", required=True, help="index folder to write")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of images held out (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--words", default=None, help="ImageNet words.txt for class names (default: the tree's names)"
    )


def sigterm_exit(exc: BaseException) -> int:
    """A harvest stopped by SIGTERM after saving its answers: one line on stderr, exit 143 (128 + 15)."""
    log.error(f"geo-build-dataset: {exc}")
    return 128 + signal.SIGTERM


def run_command(args: argparse.Namespace) -> int:
    """Run one GeoImageNet subcommand; logs its reconciling summary line(s) (to stdout)."""
    if args.command == "harvest-flickr":
        from geo_ssl.pipeline.geoimagenet.harvest import (
            HarvestOptions,
            Terminated,
            harvest_flickr,
            status_line,
        )

        opts = HarvestOptions(
            api_url=args.api_url, rate_limit=args.rate_limit, concurrency=args.concurrency, batch=args.batch,
            max_attempts=args.max_attempts, retry_base=args.retry_base, timeout=args.timeout,
            flush_seconds=args.flush_seconds,
        )  # fmt: skip
        try:
            summary = harvest_flickr(args.urls, args.out, opts, credentials=args.credentials, yfcc=args.yfcc,
                                     limit=args.limit)  # fmt: skip
        except Terminated as exc:
            return sigterm_exit(exc)
        log.info(summary.line(), extra=STDOUT)
        log.info(status_line(summary), extra=STDOUT)
    elif args.command == "synth-imagenet":
        from geo_ssl.pipeline.geoimagenet.synth import synth_imagenet

        res = synth_imagenet(args.out, classes=args.classes, per_class=args.images_per_class, seed=args.seed,
                             words=args.words)  # fmt: skip
        log.info(res["line"], extra=STDOUT)
    elif args.command == "index-imagenet":
        from geo_ssl.pipeline.geoimagenet.index import index_imagenet

        summary = index_imagenet(args.root, args.harvest, args.out, val_fraction=args.val_fraction,
                                 seed=args.seed, words=args.words)  # fmt: skip
        log.info(summary.line(), extra=STDOUT)
    return 0


def add_build_flags(p: argparse.ArgumentParser) -> None:
    """Flags of `build` for the GeoImageNet chain (the fMoW build ignores them)."""
    g = p.add_argument_group("GeoImageNet (--source geoimagenet)")
    g.add_argument("--urls", default=None, help="ImageNet URL list (fall11_urls.txt format)")
    g.add_argument("--yfcc", default=None, help="YFCC100M dump to join before calling the API")
    g.add_argument("--credentials", default=None, help="Flickr key/secret file (default: env)")
    g.add_argument("--api-url", default=None, help="Flickr REST endpoint (default: the real one)")
    g.add_argument("--rate-limit", type=float, default=None, help="calls per hour (default 3600)")
    g.add_argument("--words", default=None, help="ImageNet words.txt for class names")


def run_build(args: argparse.Namespace, shard: dict) -> int:
    """`build --source geoimagenet`: harvest, index-imagenet, cluster and write-shards in one resumable run."""
    from geo_ssl.pipeline.geoimagenet.build import build_geoimagenet, load_config

    flags = {k: getattr(args, k, None) for k in ("root", "out", "k", "urls", "yfcc", "credentials", "api_url",
                                                  "rate_limit", "words")}  # fmt: skip
    from geo_ssl.pipeline.geoimagenet.harvest import Terminated

    try:
        build_geoimagenet(load_config(args.config, flags, shard), rebuild=getattr(args, "rebuild", False))
    except Terminated as exc:
        return sigterm_exit(exc)
    return 0
