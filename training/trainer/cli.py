"""`geo-pretrain`: MoCo-v2 (+temporal positives, +geo head) or SimCLR on geo-ssl shards.

    geo-pretrain --data SHARDS --out runs/r50 [--config run.toml] [--method moco+geo+tp] [--resume]
    torchrun --nproc_per_node 8 -m geo_ssl.training.trainer.cli --config run.toml

A TOML file sets any field (same names, e.g. `batch_size = 256`); flags override it. Exit status: 0 done,
2 bad config or input, 143 stopped by SIGTERM after writing a checkpoint (continue with --resume).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from geo_ssl.pipeline import __version__
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.trainer.config import add_config_flags, config_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geo-pretrain",
        description="Self-supervised pretraining on geo-ssl WebDataset shards (one process or torchrun DDP).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", default=None, help="TOML file with config fields; flags override it")
    add_config_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        from geo_ssl.training.trainer.loop import pretrain

        result = pretrain(config_from_args(args))
    except GeoSSLError as exc:
        print(f"geo-pretrain: error: {exc}", file=sys.stderr)
        sys.exit(2)
    if result["interrupted"]:
        sys.exit(128 + signal.SIGTERM)


if __name__ == "__main__":
    main()
