"""`geo-pretrain` as it runs, with each rank writing down the batches it trains on.

    python -m torch.distributed.run --standalone --nproc_per_node N tests/training/data/trainer_probe.py \\
        RECORDS [--pause-at G] -- GEO-PRETRAIN-ARGS...

The trainer is the real one (geo_ssl.training.trainer.cli.main); the only addition is an observer on
the training loader's batches: rank R appends {"step", "epoch", "epoch_step", "keys", "digest"} to
RECORDS/rank{R}.jsonl for every batch it takes, where step = epoch x steps_per_epoch + epoch_step is the
batch's index in the run (0-based). With --pause-at G, a rank about to take batch G (so it has trained G
steps and written any checkpoint due) writes RECORDS/paused-rank{R} holding its process group id (each
rank is a session of its own under torchrun), and waits until a test kills it or creates RECORDS/go.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator

from tests.training.data.epoch_probe import digest


def _observe(records: str, pause_at: int | None) -> None:
    from geo_ssl.training.data.loader import StreamingLoader
    from geo_ssl.training.trainer import loop

    rank = int(os.environ.get("RANK", "0"))
    where: dict[int, tuple[int, int]] = {}
    set_epoch, fork_shielded = StreamingLoader.set_epoch, loop.fork_shielded

    def noted_set_epoch(self: StreamingLoader, epoch: int, start_step: int = 0) -> None:
        set_epoch(self, epoch, start_step)
        where[id(self)] = (int(epoch), int(start_step))

    def recorded(iterable: Iterable) -> Iterator:
        if id(iterable) not in where:  # the kNN monitor's eval loaders
            return fork_shielded(iterable)
        epoch, start = where[id(iterable)]
        return _batches(fork_shielded(iterable), len(iterable), epoch, start)

    def _batches(it: Iterator[dict], steps: int, epoch: int, start: int) -> Iterator[dict]:
        with open(os.path.join(records, f"rank{rank}.jsonl"), "a") as f:
            for epoch_step, batch in enumerate(it, start=start):
                step = epoch * steps + epoch_step
                if step == pause_at:
                    tmp = os.path.join(records, f".paused-rank{rank}")
                    with open(tmp, "w") as m:
                        m.write(str(os.getpgrp()))
                    os.replace(tmp, os.path.join(records, f"paused-rank{rank}"))
                    go, deadline = os.path.join(records, "go"), time.monotonic() + 600
                    while not os.path.exists(go) and time.monotonic() < deadline:
                        time.sleep(0.05)  # until killed, or told to go on
                row = {"step": step, "epoch": epoch, "epoch_step": epoch_step, "keys": list(batch["key"])}
                f.write(json.dumps({**row, "digest": digest(batch)}) + "\n")
                f.flush()
                yield batch

    StreamingLoader.set_epoch = noted_set_epoch
    loop.fork_shielded = recorded


def main() -> None:
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser()
    ap.add_argument("records")
    ap.add_argument("--pause-at", type=int, default=None)
    args = ap.parse_args(argv[:cut])
    os.makedirs(args.records, exist_ok=True)
    _observe(args.records, args.pause_at)
    from geo_ssl.training.trainer.cli import main as geo_pretrain

    geo_pretrain(argv[cut + 1 :])


if __name__ == "__main__":
    main()
