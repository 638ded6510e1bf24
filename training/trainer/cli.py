"""`geo-pretrain`: MoCo-v2 (+temporal positives, +geo head), SimCLR, BYOL or a plug-in method on geo-ssl shards.

    geo-pretrain --data SHARDS --out runs/r50 [--config run.toml] [--method moco+geo+tp] [--resume]
    geo-pretrain --preset gassl-fmow-moco-geo-tp --data SHARDS --out runs/gassl   (--preset list)
    geo-pretrain --plugins my_pkg.my_method --method my-method --data SHARDS --out runs/mine
    torchrun --nproc_per_node 8 -m geo_ssl.training.trainer.cli --config run.toml

A TOML file sets any field (same names, e.g. `batch_size = 256`); flags override it. Exit status: 0 done,
2 bad config or input (or no space for a checkpoint), 3 storage kept failing, 143 / 130 stopped by SIGTERM /
SIGINT (Ctrl-C) after writing a checkpoint (continue with --resume).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from geo_ssl.pipeline import __version__
from geo_ssl.pipeline.common import storage
from geo_ssl.pipeline.common.cli_args import OneLineParser
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.logs import add_verbosity_flags, set_verbosity
from geo_ssl.pipeline.common.retry import EXIT_USAGE, explain_failure
from geo_ssl.pipeline.common.storage import add_storage_flags
from geo_ssl.training.trainer.config import add_config_flags, config_from_args
from geo_ssl.training.trainer.preflight import preflight

EPILOG = """\
stopping and resuming:
  SIGTERM (to the main process or to the whole process group, e.g. Slurm, systemd, timeout,
  kill -TERM -- -PGID) or SIGINT (Ctrl-C) finishes the current step, writes checkpoint-last.pt at that
  step and exits 143 (SIGTERM) or 130 (SIGINT); the loader workers ignore both. After kill -9,
  --resume continues from the last checkpoint (written every --ckpt-every steps, and at the end).
  `--out RUN --resume` alone continues a run: the rest of its config comes from RUN/config.toml,
  except --max-steps, which limits one invocation only (a plain --resume runs to the planned end;
  give --max-steps again to stop earlier). One run at a time per --out (a lock file); temp files of
  a killed run are removed at the next start. A disk without room for the next checkpoint (checked
  before each one) stops the run with one line naming the folder (exit 2); the previous checkpoint
  is kept and the loader workers end.

checkpoint history: each --ckpt-every checkpoint is also kept as RUN/checkpoint-step{STEP:08d}.pt
  (a hard link to checkpoint-last.pt in a local folder, a copy in a bucket); the --keep-checkpoints
  newest stay (default 2, 0 = none), and the --save-steps ones (e.g. 1000,5000) for good. geo-eval
  and geo-export read them like checkpoint-last.pt; --resume always continues from checkpoint-last.pt.

data path: --data-path cpu (the default) decodes and augments in the loader workers; --data-path gpu
  (nvJPEG + batched augmentation on the training device) is opt-in until a GPU benchmark shows it
  matches the CPU path's augmentation statistics and is faster.

exit status: 0 done (or nothing left to train), 2 bad config or input, or no space for a checkpoint
  (one line on stderr), 3 storage kept failing after retries (rerun later), 143 / 130 stopped by
  SIGTERM / SIGINT after writing a checkpoint (continue with --resume).
"""


EXIT_SIGINT = 130  # 128 + SIGINT, the shell's convention for Ctrl-C


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="geo-pretrain",
        description="Self-supervised pretraining on geo-ssl WebDataset shards (one process or torchrun DDP).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", default=None, help="TOML file with config fields; flags override it")
    parser.add_argument(
        "--preset",
        default=None,
        help="shipped run preset (e.g. gassl-fmow-moco-geo-tp); --config and flags override it (another "
        "--batch-size rescales its lr linearly unless --lr is given); `--preset list` prints them",
    )
    add_config_flags(parser)
    add_storage_flags(parser)  # not config fields: never written to config.toml or checkpoints
    add_verbosity_flags(parser)
    return parser


def load_flag_plugins(argv: Sequence[str] | None) -> None:
    """Import the --plugins modules before the parser is built, so that their methods' options are flags."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugins", default="")
    known, _ = pre.parse_known_args(argv)
    if known.plugins:
        from geo_ssl.training.methods import load_plugins

        load_plugins(known.plugins)


def main(argv: Sequence[str] | None = None) -> None:
    try:
        load_flag_plugins(argv)
    except GeoSSLError as exc:
        print(f"geo-pretrain: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    args = build_parser().parse_args(argv)
    set_verbosity(args)
    try:
        if args.preset == "list":
            from geo_ssl.training.trainer.presets import format_presets

            print(format_presets())
            return
        storage.configure_from_args(args)  # before --config/--out are read; torchrun ranks each do it
        cfg = config_from_args(args)
        preflight(cfg, int(os.environ.get("WORLD_SIZE", "1")))  # before torch is imported: fast errors
        from geo_ssl.training.trainer.loop import pretrain

        result = pretrain(cfg)
    except GeoSSLError as exc:  # a shard the store stopped serving (ShardReadError) has exit_code 3
        print(f"geo-pretrain: error: {storage.redact(str(exc))}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", EXIT_USAGE))
    except Exception as exc:  # storage kept failing or refused the credentials: one line (see retry.py)
        explained = explain_failure(exc)
        if explained is None:
            raise
        print(f"geo-pretrain: error: {storage.redact(explained[0])}", file=sys.stderr)
        sys.exit(explained[1])
    except KeyboardInterrupt:  # Ctrl-C before the run took SIGINT over (while starting): nothing trained
        print("geo-pretrain: interrupted before training started", file=sys.stderr)
        sys.exit(EXIT_SIGINT)
    if result["interrupted"]:
        sys.exit(128 + result["signal"])  # 143 SIGTERM, 130 SIGINT


if __name__ == "__main__":
    main()
