"""A few-step geo-pretrain run on tiny shards, for tests that need a real checkpoint to evaluate or export."""

from __future__ import annotations

from pathlib import Path

from geo_ssl.training.trainer.config import PretrainConfig
from geo_ssl.training.trainer.loop import pretrain


def tiny_run(shards: str, out: Path, **overrides) -> Path:
    """Trains ResNet-18 on 8 samples of `shards` into `out` (settings overridable) and returns `out`."""
    values = dict(
        data=shards, out=str(out), arch="resnet18", method="moco", image_size=32, batch_size=4, moco_k=8,
        epochs=1, epoch_samples=8, num_workers=0, shuffle_buffer=4, knn_every=0, lr=0.03,
    )  # fmt: skip
    values.update(overrides)
    pretrain(PretrainConfig(**values))
    return out
