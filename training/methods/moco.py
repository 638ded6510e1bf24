"""MoCo-v2 (He et al. 2020, Chen et al. 2020) and GASSL's variants: +tp pairs, +geo head.

Its settings are the config's moco_* fields, shuffle_bn, mlp, head_bn, dim and temperature (plain
config fields since the first release; the model is geo_ssl.training.models.moco, checked against
GASSL's own code)."""

from __future__ import annotations

from typing import Any

from torch import nn

from geo_ssl.training.methods.base import Method, MethodFamily
from geo_ssl.training.models.moco import GeoMoCo, MoCo


class MocoFamily(MethodFamily):
    name = "moco"
    loader = "pairs"
    geo_head = True
    split_bn = True
    backbone_prefix = "moco.encoder_q."
    summary = "MoCo-v2: two augmentations of one image are the positive pair, a queue of keys the negatives"

    def describe(self, method: Method) -> str:
        gassl = "MoCo-V2" + ("+Geo" if method.geo else "") + ("+TP" if method.temporal else "")
        return f"{super().describe(method)} (GASSL '{gassl}')"

    def build(self, cfg: Any, method: Method, n_clusters: int, bn_splits: int) -> nn.Module:
        moco = MoCo(
            cfg.arch, dim=cfg.dim, K=cfg.moco_k, m=cfg.moco_m, T=cfg.temperature, mlp=cfg.mlp,
            bn_splits=bn_splits, shuffle_bn=cfg.shuffle_bn, head_bn=cfg.head_bn,
        )  # fmt: skip
        return GeoMoCo(moco, n_clusters=n_clusters if method.geo else 0, moco_weight=cfg.moco_weight,
                       geo_weight=cfg.geo_weight)  # fmt: skip

    def check(self, cfg: Any, method: Method, world_size: int) -> str | None:
        if cfg.moco_k <= 0:
            return f"moco_k = {cfg.moco_k} must be > 0"
        if not 0 <= cfg.moco_m < 1:
            return f"moco_m = {cfg.moco_m} must be in [0, 1)"
        if cfg.moco_k < cfg.batch_size:
            return f"moco_k = {cfg.moco_k} is smaller than the global batch {cfg.batch_size}"
        return None

    def advice(self, cfg: Any, samples_per_epoch: int) -> str | None:
        if cfg.moco_k > samples_per_epoch - cfg.batch_size:
            return (f"moco_k={cfg.moco_k} > {samples_per_epoch - cfg.batch_size}: the queue will hold a key of the "
                    "query's own location from the previous epoch (a false negative); use a smaller K")  # fmt: skip
        return None
