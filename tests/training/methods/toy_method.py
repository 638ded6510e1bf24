"""A toy SSL method added from a test file alone: one family class and one `register` line.

"Mean match": the projections of the two views of a pair should agree (MSE), with a variance floor
against collapse. Its own option `toy_weight` becomes a config key and the flag --toy-weight."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from geo_ssl.training.methods import MethodFamily, register
from geo_ssl.training.models.backbone import build_resnet


@dataclass
class ToyOptions:
    toy_weight: float = field(default=1.0, metadata={"help": "weight of the variance floor"})


class MeanMatch(nn.Module):
    def __init__(self, arch: str, dim: int, weight: float) -> None:
        super().__init__()
        self.net = build_resnet(arch, num_classes=dim)
        self.weight = weight

    @property
    def backbone(self) -> nn.Module:
        return self.net

    def forward(self, q: torch.Tensor, k: torch.Tensor, geo: torch.Tensor | None = None):
        a, b = self.net(q), self.net(k)
        floor = F.relu(1 - a.std(dim=0)).mean()
        loss = F.mse_loss(a, b) + self.weight * floor
        return loss, {"loss": loss.detach(), "q_std": F.normalize(a.detach(), dim=1).std(0).mean()}


class ToyFamily(MethodFamily):
    name = "toy-match"
    loader = "pairs"
    backbone_prefix = "net."
    summary = "toy: two views' projections agree"
    options = ToyOptions

    def build(self, cfg, method, n_clusters, bn_splits):
        return MeanMatch(cfg.arch, cfg.dim, self.section(cfg).toy_weight)

    def check(self, cfg, method, world_size):
        if self.section(cfg).toy_weight < 0:
            return f"toy_weight = {self.section(cfg).toy_weight} must be >= 0"
        return None


register(ToyFamily())
