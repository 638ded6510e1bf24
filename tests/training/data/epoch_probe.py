"""A loader driver for tests, run as a real process.

Under torchrun (gloo), each rank runs the whole matrix of one world size and writes what it saw to
OUT/rank{R}.json:

    python -m torch.distributed.run --standalone --nproc_per_node N tests/training/data/epoch_probe.py \\
        SHARDS OUT --batch-size B

For 0, 1 and 2 loader workers, `pretrain_loader` and `views_loader` (decode="defer": the keys and the
chosen JPEG bytes, no decoding) give epochs 0 and 1 (seed 0), epoch 0 again from a new loader, epoch 0
with seed 1, and epoch 1 resumed at its middle step; the eval loader gives two passes over the first view
of every location and two over every view. Each batch is recorded as its keys and a digest of its bytes.

`digest` is shared with trainer_probe.py, which records the batches of a real `geo-pretrain` run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os

from geo_ssl.training.data.loader import LoaderConfig, eval_loader, pretrain_loader, views_loader

WORKERS = (0, 1, 2)


def digest(batch: dict) -> str:
    """The decoded tensors of a batch ("q", "k", "views" or "image") or its JPEG bytes (decode="defer")."""
    h = hashlib.sha256()
    for name in ("q", "k", "views", "image"):
        if name in batch:
            h.update(batch[name].numpy().tobytes())
    for name in ("q_jpeg", "k_jpeg"):
        for data in batch.get(name, ()):
            h.update(data)
    for views in batch.get("views_jpeg", ()):
        for data in views:
            h.update(data)
    return h.hexdigest()[:16]


def _record(loader) -> list[dict]:
    return [{"keys": list(b["key"]), "digest": digest(b)} for b in loader]


def _train_runs(make, rank: int, world: int) -> dict:
    """What one training loader gives: epochs, a repeat from a new loader, another seed, a resume."""
    loader = make(0, rank, world)
    out: dict = {"steps": len(loader), "plan": loader.plan.as_dict()}
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        out[f"epoch{epoch}"] = _record(loader)
    again = make(0, rank, world)
    again.set_epoch(0)
    out["epoch0_again"] = _record(again)
    other = make(1, rank, world)
    other.set_epoch(0)
    out["epoch0_seed1"] = _record(other)
    out["resume_at"] = start = len(loader) // 2
    loader.set_epoch(1, start_step=start)
    out["epoch1_resumed"] = _record(loader)
    return out


def matrix(shards: str, out: str, batch_size: int) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    result: dict = {"rank": rank, "world": world, "train": {}, "eval": {}}
    for workers in WORKERS:

        def cfg(seed: int, workers: int = workers) -> LoaderConfig:
            return LoaderConfig(
                shards, split="train", batch_size=batch_size, image_size=16, num_workers=workers, shuffle_buffer=4,
                seed=seed, decode="defer",
            )  # fmt: skip

        result["train"][f"pairs/w{workers}"] = _train_runs(
            lambda seed, r, w: pretrain_loader(cfg(seed), rank=r, world_size=w), rank, world
        )
        result["train"][f"views/w{workers}"] = _train_runs(
            lambda seed, r, w: views_loader(cfg(seed), n_views=3, rank=r, world_size=w), rank, world
        )
        for all_views in (False, True):
            loader = eval_loader(shards, image_size=16, batch_size=batch_size, num_workers=workers,
                                 all_views=all_views)  # fmt: skip
            name = f"{'views' if all_views else 'first'}/w{workers}"
            result["eval"][name] = [_record(loader), _record(loader)]
    dist.barrier()  # the ranks ran side by side, as under a trainer; the test compares what they saw
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("shards")
    ap.add_argument("out")
    ap.add_argument("--batch-size", type=int, default=5)
    args = ap.parse_args()
    matrix(args.shards, args.out, args.batch_size)


if __name__ == "__main__":
    main()
