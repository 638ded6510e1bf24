"""Shuffle-BN: keep BatchNorm from leaking which key belongs to which query.

MoCo's key encoder sees a batch whose BN statistics, if computed over exactly the samples that the
query encoder saw, give the network a shortcut ("find the sample with matching batch statistics").
Two ways to break that:

* Under DDP (several processes): each process normalises only its own slice of the global batch, so
  the keys are gathered from every rank, permuted with one permutation drawn on rank 0 and broadcast,
  split again, encoded, and the features are gathered and put back in the original order. This is the
  official MoCo scheme; the collectives touch only the images and the output features.
* In one process (one GPU or CPU): a permutation alone changes nothing, BN statistics do not depend on
  sample order. So every BatchNorm computes its statistics over `num_splits` sub-batches instead
  (`SplitBatchNorm`, what several GPUs would do), and the keys are permuted before the split, so a
  key's sub-batch holds different samples than its query's sub-batch. This is the MoCo CIFAR demo's
  single-GPU recipe; with num_splits=8 it simulates 8 GPUs. Eval mode uses the ordinary running stats,
  and the running stats are the mean over sub-batches, so checkpoints are ordinary BatchNorm2d ones.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def distributed_world() -> int:
    """World size of the default process group, 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0 (no gradient; every rank must pass the same shape)."""
    if distributed_world() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def shuffle_across_ranks(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of the globally permuted batch, and the index that undoes the permutation."""
    local_n = x.shape[0]
    everything = concat_all_gather(x)
    world, rank = dist.get_world_size(), dist.get_rank()
    perm = torch.randperm(everything.shape[0], device=x.device)
    dist.broadcast(perm, src=0)  # one permutation for all ranks
    unshuffle = torch.argsort(perm)
    mine = perm.view(world, local_n)[rank]
    return everything[mine], unshuffle


@torch.no_grad()
def unshuffle_across_ranks(x: torch.Tensor, unshuffle: torch.Tensor) -> torch.Tensor:
    """Features of this rank's original samples, in their original order."""
    local_n = x.shape[0]
    everything = concat_all_gather(x)
    mine = unshuffle.view(dist.get_world_size(), local_n)[dist.get_rank()]
    return everything[mine]


@torch.no_grad()
def shuffle_local(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Permute the batch in one process (useful only together with SplitBatchNorm)."""
    perm = torch.randperm(x.shape[0], device=x.device)
    return x[perm], torch.argsort(perm)


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics come from `num_splits` interleaved sub-batches.

    Sample i belongs to sub-batch i % num_splits. The state_dict has the usual BatchNorm2d keys, so a
    model built with it exports to a plain torchvision ResNet.
    """

    def __init__(self, num_features: int, num_splits: int = 1, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.num_splits
        if not self.training or s == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % s:
            raise ValueError(f"batch of {n} is not divisible into {s} BatchNorm splits")
        if self.momentum is None:
            raise ValueError("SplitBatchNorm needs a fixed momentum")
        self.num_batches_tracked.add_(1)
        running_mean = self.running_mean.repeat(s)
        running_var = self.running_var.repeat(s)
        # (n, c) -> (n/s, s*c): each of the s channel blocks holds one sub-batch of the same channel.
        out = F.batch_norm(
            x.reshape(n // s, s * c, h, w),
            running_mean,
            running_var,
            self.weight.repeat(s) if self.weight is not None else None,
            self.bias.repeat(s) if self.bias is not None else None,
            True,
            self.momentum,
            self.eps,
        )
        with torch.no_grad():
            self.running_mean.copy_(running_mean.view(s, c).mean(0))
            self.running_var.copy_(running_var.view(s, c).mean(0))
        return out.reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_splits={self.num_splits}"


class SplitBatchNorm1d(SplitBatchNorm):
    """SplitBatchNorm for (N, C) features, as in a projection head; the state_dict is BatchNorm1d's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x[:, :, None, None]).flatten(1)
