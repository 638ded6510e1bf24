"""Projection heads on the pooled ResNet features, shared by MoCo and SimCLR.

MoCo-v2's head is Linear(d, d) -> ReLU -> Linear(d, dim). `bn=True` puts BatchNorm after the hidden
Linear, as SimCLR and MoCo v3 do: at initialisation a random ResNet maps every image to nearly the
same direction (the embedding std per dimension is a tenth of a uniform spread's), so the contrastive
loss starts at chance with weak gradients; the BatchNorm centres the batch and spreads it from the
first step, which matters when a run is only a few hundred steps long (BENCHMARKS.md, the ablation).
Under single-process shuffle-BN the head's BatchNorm uses the same sub-batches as the backbone's.
"""

from __future__ import annotations

from torch import nn

from geo_ssl.training.models.shuffle_bn import SplitBatchNorm1d


def mlp_head(d: int, out: nn.Linear, bn: bool = False, bn_splits: int = 1) -> nn.Sequential:
    """Linear(d, d) [-> BatchNorm] -> ReLU -> `out` (the ResNet's fc, d -> dim)."""
    if not bn:
        return nn.Sequential(nn.Linear(d, d), nn.ReLU(), out)
    norm = SplitBatchNorm1d(d, num_splits=bn_splits) if bn_splits > 1 else nn.BatchNorm1d(d)
    return nn.Sequential(nn.Linear(d, d, bias=False), norm, nn.ReLU(), out)
