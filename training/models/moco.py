"""MoCo-v2 with the geography-aware head of GASSL (Ayush et al., ICCV 2021, https://arxiv.org/abs/2011.09980).

`MoCo` is the contrastive model of He et al. (https://arxiv.org/abs/1911.05722) with the v2 MLP head
(Chen et al., https://arxiv.org/abs/2003.04297): forward returns logits and labels for a stock
cross-entropy, plus the query's unnormalised projection, which GASSL's geo head classifies into
geo clusters. Temporal positives need nothing here: the loader makes q and k two dates of a place.
`GeoMoCo` adds the head and the weighted loss and is the module the training loop runs.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from geo_ssl.training.models.backbone import build_resnet, feature_dim
from geo_ssl.training.models.heads import mlp_head
from geo_ssl.training.models.shuffle_bn import (
    concat_all_gather,
    distributed_world,
    shuffle_across_ranks,
    shuffle_local,
    unshuffle_across_ranks,
)


class MoCo(nn.Module):
    """Query encoder, momentum key encoder and a queue of K negative keys.

    Args:
        arch: torchvision ResNet depth (default resnet50).
        dim: projection width (128).
        K: queue length (65536). Any K >= the global batch works; the pointer wraps around.
        m: key-encoder momentum (0.999), applied to parameters only; BN buffers stay the key encoder's own.
        T: softmax temperature (0.2, the v2 recipe; the GASSL README's command used 0.02).
        mlp: the v2 head fc = Linear(d, d) -> ReLU -> Linear(d, dim), d = 512 or 2048 by depth.
        bn_splits: SplitBatchNorm sub-batches, for shuffle-BN in one process (1 = plain BatchNorm).
        shuffle_bn: permute the keys before the key encoder (across ranks under DDP, else locally).
        head_bn: BatchNorm after the head's hidden Linear (SimCLR / MoCo v3; heads.py says when it helps).
    """

    def __init__(
        self,
        arch: str = "resnet50",
        dim: int = 128,
        K: int = 65536,
        m: float = 0.999,
        T: float = 0.2,
        mlp: bool = True,
        bn_splits: int = 1,
        shuffle_bn: bool = True,
        head_bn: bool = False,
    ) -> None:
        super().__init__()
        self.K, self.m, self.T, self.dim = K, m, T, dim
        self.shuffle_bn = shuffle_bn
        self.encoder_q = build_resnet(arch, num_classes=dim, bn_splits=bn_splits)
        if mlp:
            d = feature_dim(self.encoder_q)
            self.encoder_q.fc = mlp_head(d, self.encoder_q.fc, bn=head_bn, bn_splits=bn_splits)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(dim, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _momentum_update_key_encoder(self) -> None:
        for p_q, p_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters(), strict=True):
            p_k.mul_(self.m).add_(p_q.detach(), alpha=1.0 - self.m)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys: torch.Tensor) -> None:
        keys = concat_all_gather(keys)  # global batch: every rank keeps the same queue
        n = keys.shape[0]
        if n > self.K:
            raise ValueError(f"global batch {n} is larger than the queue K={self.K}")
        ptr = int(self.queue_ptr)
        cols = (ptr + torch.arange(n, device=keys.device)) % self.K
        self.queue[:, cols] = keys.T.to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + n) % self.K

    @torch.no_grad()
    def _encode_keys(self, im_k: torch.Tensor) -> torch.Tensor:
        if not self.shuffle_bn:
            return F.normalize(self.encoder_k(im_k), dim=1)
        if distributed_world() > 1:
            im_k, unshuffle = shuffle_across_ranks(im_k)
            return unshuffle_across_ranks(F.normalize(self.encoder_k(im_k), dim=1), unshuffle)
        im_k, unshuffle = shuffle_local(im_k)
        return F.normalize(self.encoder_k(im_k), dim=1)[unshuffle]

    def forward(
        self, im_q: torch.Tensor, im_k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits (N x 1+K, positive first), labels (N zeros) and the unnormalised query projection."""
        q_proj = self.encoder_q(im_q)  # N x dim
        q = F.normalize(q_proj.float(), dim=1)
        with torch.no_grad():
            self._momentum_update_key_encoder()
            k = self._encode_keys(im_k).float()  # N x dim
        with torch.autocast(q.device.type, enabled=False):  # logits in float32 under AMP
            l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)  # N x 1
            l_neg = torch.einsum("nc,ck->nk", q, self.queue.clone().detach())  # N x K
            logits = torch.cat([l_pos, l_neg], dim=1) / self.T
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        self._dequeue_and_enqueue(k)
        return logits, labels, q_proj


def geo_moco_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    geo_logits: torch.Tensor | None = None,
    geo: torch.Tensor | None = None,
    moco_weight: float = 1.0,
    geo_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """moco_weight * CE(logits, labels) + geo_weight * CE(geo_logits, geo) (GASSL uses 1 : 1)."""
    loss_moco = F.cross_entropy(logits.float(), labels)
    stats = {
        "loss_moco": loss_moco.detach(),
        "acc_moco": (logits.argmax(1) == labels).float().mean().detach(),
    }
    loss = moco_weight * loss_moco
    if geo_logits is not None:
        if geo is None:
            raise ValueError("geo head present but no geo labels given")
        loss_geo = F.cross_entropy(geo_logits.float(), geo)
        loss = loss + geo_weight * loss_geo
        stats["loss_geo"] = loss_geo.detach()
        stats["acc_geo"] = (geo_logits.argmax(1) == geo).float().mean().detach()
    stats["loss"] = loss.detach()
    return loss, stats


def embedding_std(proj: torch.Tensor) -> torch.Tensor:
    """Mean per-dimension std of L2-normalised features: about 1/sqrt(dim) when healthy, 0 when collapsed."""
    return F.normalize(proj.detach().float(), dim=1).std(dim=0).mean()


class GeoMoCo(nn.Module):
    """MoCo plus the GASSL geo head: ReLU -> Linear(dim, n_clusters) on the unnormalised query projection.

    With n_clusters = 0 (or geo_weight = 0) there is no head and the loss is plain MoCo. The head lives in
    this module so DDP averages its gradients together with the encoder's.
    """

    def __init__(
        self, moco: MoCo, n_clusters: int = 0, moco_weight: float = 1.0, geo_weight: float = 1.0
    ) -> None:
        super().__init__()
        self.moco = moco
        self.moco_weight, self.geo_weight = moco_weight, geo_weight
        use_geo = n_clusters > 0 and geo_weight > 0
        self.geo_head = nn.Sequential(nn.ReLU(), nn.Linear(moco.dim, n_clusters)) if use_geo else None

    @property
    def backbone(self) -> nn.Module:
        """The query encoder, the network that is evaluated and exported."""
        return self.moco.encoder_q

    def forward(
        self, im_q: torch.Tensor, im_k: torch.Tensor, geo: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, labels, q_proj = self.moco(im_q, im_k)
        geo_logits = self.geo_head(q_proj) if self.geo_head is not None else None
        loss, stats = geo_moco_loss(logits, labels, geo_logits, geo, self.moco_weight, self.geo_weight)
        stats["q_std"] = embedding_std(q_proj)
        return loss, stats
