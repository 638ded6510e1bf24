"""SimCLR (Chen et al. 2020) on the same shards: two views of one location, in-batch negatives (NT-Xent).

The model is geo_ssl.training.models.simclr; its settings are the shared dim, temperature and head_bn."""

from __future__ import annotations

from typing import Any

from torch import nn

from geo_ssl.training.methods.base import Method, MethodFamily
from geo_ssl.training.models.simclr import SimCLR


class SimclrFamily(MethodFamily):
    name = "simclr"
    loader = "views"
    backbone_prefix = "encoder."
    summary = "SimCLR: two augmentations of one image, the other images of the batch are the negatives"

    def build(self, cfg: Any, method: Method, n_clusters: int, bn_splits: int) -> nn.Module:
        return SimCLR(cfg.arch, dim=cfg.dim, T=cfg.temperature, bn_splits=bn_splits, head_bn=cfg.head_bn)

    def check(self, cfg: Any, method: Method, world_size: int) -> str | None:
        if cfg.batch_size < 2:
            return f"{method.name} needs batch_size >= 2 (the other samples are the negatives)"
        return None
