"""A loader driver for tests, run as a real process.

Under torchrun (gloo), each rank iterates its loader for two epochs and writes the keys it saw:

    python -m torch.distributed.run --standalone --nproc_per_node N tests/training/data/epoch_probe.py \\
        SHARDS OUT --workers W --batch-size B

Alone with --digests FILE, one process iterates epoch --epoch from --start-step and appends one line per
batch (step, keys, a digest of the decoded tensors), flushed, so a test can kill it mid-epoch and resume.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

from geo_ssl.training.data.loader import LoaderConfig, pretrain_loader


def digest(batch: dict) -> str:
    h = hashlib.sha256()
    for name in ("q", "k"):
        h.update(batch[name].numpy().tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("shards")
    ap.add_argument("out")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=5)
    ap.add_argument("--digests", action="store_true", help="one process, decoded batches, lines to OUT")
    ap.add_argument("--epoch", type=int, default=0)
    ap.add_argument("--start-step", type=int, default=0)
    ap.add_argument("--pause", type=float, default=0.0, help="seconds after each batch")
    args = ap.parse_args()
    cfg = LoaderConfig(
        args.shards, batch_size=args.batch_size, image_size=16, num_workers=args.workers, shuffle_buffer=4,
        decode="cpu" if args.digests else "defer",
    )  # fmt: skip
    if args.digests:
        loader = pretrain_loader(cfg)
        loader.set_epoch(args.epoch, start_step=args.start_step)
        with open(args.out, "a") as f:
            for step, batch in enumerate(loader, start=args.start_step):
                f.write(json.dumps({"step": step, "keys": batch["key"], "digest": digest(batch)}) + "\n")
                f.flush()
                time.sleep(args.pause)
        return

    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    loader = pretrain_loader(cfg, rank=rank, world_size=world)
    epochs = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        epochs.append([list(batch["key"]) for batch in loader])
    dist.barrier()  # every rank finished the same number of steps (a rank short of batches would hang here)
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world": world, "steps": len(loader), "epochs": epochs}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
