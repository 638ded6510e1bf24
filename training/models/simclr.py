"""SimCLR (Chen et al. 2020, https://arxiv.org/abs/2002.05709) on the same shards, via `views_loader`.

It exists to show that the shards are not MoCo-specific: two views of one location (two dates, each
augmented) are the positive pair, every other view in the global batch is a negative (NT-Xent).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import nn

from geo_ssl.training.models.backbone import build_resnet, feature_dim
from geo_ssl.training.models.heads import mlp_head
from geo_ssl.training.models.moco import embedding_std
from geo_ssl.training.models.shuffle_bn import distributed_world


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, T: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent over the global batch (negatives gathered from every rank, with gradient); loss and top-1."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # 2N x d, rows i and i+N are a pair
    if distributed_world() > 1:
        everything = torch.cat(dist_fn.all_gather(z))  # world*2N x d, rank blocks in rank order
        offset = dist.get_rank() * 2 * n
    else:
        everything, offset = z, 0
    sim = z @ everything.T / T  # 2N x world*2N
    rows = torch.arange(2 * n, device=z.device)
    sim[rows, offset + rows] = float("-inf")  # a view is not its own negative
    positives = offset + (rows + n) % (2 * n)
    loss = F.cross_entropy(sim, positives)
    acc = (sim.argmax(1) == positives).float().mean()
    return loss, acc.detach()


class SimCLR(nn.Module):
    """ResNet + MLP projector (d -> d -> dim); forward takes views [B, N>=2, 3, S, S] and uses the first two."""

    def __init__(
        self,
        arch: str = "resnet50",
        dim: int = 128,
        T: float = 0.2,
        bn_splits: int = 1,
        head_bn: bool = False,
    ) -> None:
        super().__init__()
        self.T = T
        self.encoder = build_resnet(arch, num_classes=dim, bn_splits=bn_splits)
        d = feature_dim(self.encoder)
        self.encoder.fc = mlp_head(d, self.encoder.fc, bn=head_bn, bn_splits=bn_splits)

    @property
    def backbone(self) -> nn.Module:
        return self.encoder

    def forward(self, views: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if views.dim() != 5 or views.shape[1] < 2:
            raise ValueError(f"SimCLR needs views shaped [B, N>=2, 3, S, S], got {tuple(views.shape)}")
        b = views.shape[0]
        z = self.encoder(torch.cat([views[:, 0], views[:, 1]]))  # one pass: BN sees both views
        with torch.autocast(z.device.type, enabled=False):  # similarities in float32 under AMP
            loss, acc = nt_xent(z[:b], z[b:], self.T)
        return loss, {"loss": loss.detach(), "acc_simclr": acc, "q_std": embedding_std(z[:b])}
