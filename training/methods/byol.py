"""BYOL (Grill et al. 2020, https://arxiv.org/abs/2006.07733) on the same shards: no negatives.

An online network (ResNet, projector, predictor) predicts the projection of the other view made by a
target network (ResNet, projector) that is an exponential moving average of the online one. The EMA
momentum rises from `byol_tau` to 1 on the paper's cosine, tau_k = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2
over the run's K steps, applied after every optimiser step (the trainer's per-step hook). With +tp the
two views are two dates of one location, as for MoCo.

Loss: -(cos(p1, z2) + cos(p2, z1)) / 2, lightly's convention (its NegativeCosineSimilarity over both
directions, averaged). The paper's symmetrised 2 - 2 cos sum is 4 + 4 x this: the same minimiser, a 4x
larger gradient, so the paper's lr corresponds to 4x the lr here. This whole method is this file plus
one `register` line in registry.py.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geo_ssl.training.methods.base import Method, MethodFamily
from geo_ssl.training.models.backbone import build_resnet, feature_dim
from geo_ssl.training.models.moco import embedding_std


@dataclass
class ByolOptions:
    byol_tau: float = field(
        default=0.99, metadata={"help": "target EMA momentum at step 0, raised to 1 on a cosine over the "
                                        "run (BYOL paper: 0.996 for 1000 epochs; shorter runs want less)"},
    )  # fmt: skip
    byol_hidden: int = field(
        default=4096, metadata={"help": "hidden width of the projector and predictor (BYOL: 4096)"}
    )


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """-(cos(p1, z2) + cos(p2, z1)) / 2, averaged over the batch; z are the target's (no gradient)."""
    return -0.5 * (
        F.cosine_similarity(p1, z2.detach(), dim=1).mean()
        + F.cosine_similarity(p2, z1.detach(), dim=1).mean()
    )


def target_momentum(tau_base: float, step: int, total_steps: int) -> float:
    """BYOL's schedule: tau_base at step 0, 1 at the last step."""
    return 1 - (1 - tau_base) * (math.cos(math.pi * min(step, total_steps) / max(1, total_steps)) + 1) / 2


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    """BYOL's projector and predictor: Linear -> BatchNorm -> ReLU -> Linear."""
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, d_out)
    )


class BYOL(nn.Module):
    """forward(q, k, geo=None) -> (loss, stats); `backbone` is the online ResNet (fc = its projector)."""

    def __init__(self, arch: str = "resnet50", dim: int = 256, hidden: int = 4096) -> None:
        super().__init__()
        self.encoder = build_resnet(arch, num_classes=dim)
        self.encoder.fc = _mlp(feature_dim(self.encoder), hidden, dim)
        self.predictor = _mlp(dim, hidden, dim)
        self.target = copy.deepcopy(self.encoder)
        for p in self.target.parameters():
            p.requires_grad_(False)

    @property
    def backbone(self) -> nn.Module:
        return self.encoder

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """target = tau * target + (1 - tau) * online, parameter by parameter (buffers are copied)."""
        for t, o in zip(self.target.parameters(), self.encoder.parameters(), strict=True):
            t.mul_(tau).add_(o.detach(), alpha=1 - tau)
        for t, o in zip(self.target.buffers(), self.encoder.buffers(), strict=True):
            t.copy_(o)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, geo: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z_q, z_k = self.encoder(q), self.encoder(k)
        p_q, p_k = self.predictor(z_q), self.predictor(z_k)
        with torch.no_grad():
            t_q, t_k = self.target(q), self.target(k)
        with torch.autocast(q.device.type, enabled=False):  # cosines in float32 under AMP
            loss = byol_loss(p_q.float(), p_k.float(), t_q.float(), t_k.float())
        return loss, {"loss": loss.detach(), "loss_byol": loss.detach(), "q_std": embedding_std(z_q)}


class ByolFamily(MethodFamily):
    name = "byol"
    loader = "pairs"
    backbone_prefix = "encoder."
    summary = "BYOL: predict the other view's projection made by an EMA target network; no negatives"
    options = ByolOptions

    def build(self, cfg: Any, method: Method, n_clusters: int, bn_splits: int) -> nn.Module:
        return BYOL(cfg.arch, dim=cfg.dim, hidden=self.section(cfg).byol_hidden)

    def check(self, cfg: Any, method: Method, world_size: int) -> str | None:
        opts = self.section(cfg)
        if not 0 <= opts.byol_tau <= 1:
            return f"byol_tau = {opts.byol_tau} must be in [0, 1]"
        if opts.byol_hidden <= 0:
            return f"byol_hidden = {opts.byol_hidden} must be > 0"
        if cfg.batch_size // world_size < 2:
            return f"{method.name} needs >= 2 samples per rank (BatchNorm in the projector and predictor)"
        return None

    def on_step(self, cfg: Any, model: nn.Module, step: int, total_steps: int) -> None:
        model.update_target(target_momentum(self.section(cfg).byol_tau, step, total_steps))
