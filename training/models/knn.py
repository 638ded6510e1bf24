"""Weighted kNN classification on frozen features (InstDisc / MoCo-demo convention).

Features are the backbone's pooled features, L2-normalised; a query's label is the class with the most
weight among its k most cosine-similar bank features, each weighing exp(similarity / T). Defaults are
k=200, T=0.1. Used as the online monitor during pretraining and by `geo-eval knn`.

The pretraining monitor runs on rank 0 only, over the whole bank and query splits (its eval loaders are
not split over ranks; the other ranks wait at a barrier). `eval_loader(rank=, world_size=)` gives each
rank a disjoint part of a split for code that gathers features itself.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.progress import progress
from geo_ssl.training.models.metrics import classification_report


def require_labels(*sets: Features) -> None:
    """Anonymised fMoW splits (test/, seq/) carry category -1: there is nothing to score them against."""
    for features in sets:
        if len(features.labels) and int(features.labels.min()) < 0:
            raise GeoSSLError(
                "these samples have no category label (category_index -1, e.g. fMoW's anonymised test/seq "
                "splits): evaluate on a labelled split such as train or val"
            )


@dataclass
class Features:
    feats: torch.Tensor  # N x D float32 (on CPU)
    labels: torch.Tensor  # N int64
    keys: list[str]


@torch.no_grad()
def extract_features(
    model: nn.Module,
    batches: Iterable,
    device: torch.device,
    max_samples: int = 0,
    normalize: bool = True,
    desc: str = "features",
    autocast_dtype: torch.dtype | None = None,
) -> Features:
    """Run `model` (in eval mode, restored afterwards) over eval_loader items {"image", "category", "key"}."""
    was_training = model.training
    model.eval()
    feats, labels, keys = [], [], []
    n = 0
    amp = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    try:
        for batch in progress(batches, total=None, desc=desc, unit="batch"):
            images, category = batch["image"], batch["category"]
            with amp:
                f = model(images.to(device, non_blocking=True)).float()
            feats.append((F.normalize(f, dim=1) if normalize else f).cpu())
            labels.append(category.cpu().long())
            keys.extend(batch.get("key") or [""] * len(images))
            n += len(images)
            if max_samples and n >= max_samples:
                break
    finally:
        model.train(was_training)
    if not feats:
        return Features(torch.empty(0, 0), torch.empty(0, dtype=torch.long), [])
    out = Features(torch.cat(feats), torch.cat(labels), keys)
    if max_samples:
        out = Features(out.feats[:max_samples], out.labels[:max_samples], out.keys[:max_samples])
    return out


def normalized(features: Features) -> Features:
    """The same features, L2-normalised (kNN works on cosine similarity)."""
    return Features(F.normalize(features.feats, dim=1), features.labels, features.keys)


def knn_scores(
    query: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    n_classes: int,
    k: int = 200,
    T: float = 0.1,
    chunk: int = 1024,
) -> torch.Tensor:
    """Per query row, each class's share of the neighbours' vote weight (rows sum to 1; features already
    L2-normalised): the kNN's class probabilities, which a location's views average (metrics.py)."""
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, query.shape[0], chunk):
        sim = query[start : start + chunk] @ bank.T  # q x N
        top_sim, top_idx = sim.topk(k, dim=1)  # q x k
        weights = (top_sim / T).exp()
        votes = torch.zeros(sim.shape[0], n_classes, dtype=weights.dtype)
        votes.scatter_add_(1, bank_labels[top_idx], weights)
        out.append(votes / votes.sum(1, keepdim=True))
    return torch.cat(out) if out else torch.empty(0, n_classes)


def knn_predict(
    query: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, n_classes: int, **kw
) -> torch.Tensor:
    """Predicted class per query row (features already L2-normalised); `kw`: knn_scores' k, T, chunk."""
    return knn_scores(query, bank, bank_labels, n_classes, **kw).argmax(1)


def knn_top1(bank: Features, query: Features, k: int = 200, T: float = 0.1) -> dict:
    """Top-1 accuracy (%) of kNN on `query` with `bank` as the labelled memory, with macro F1 and the
    per-location top-1 where a location's views vote (metrics.classification_report)."""
    if k < 1 or not (T > 0 and math.isfinite(T)):
        raise ValueError(f"kNN needs k >= 1 and a finite T > 0 (k={k}, T={T})")
    if len(bank.labels) == 0 or len(query.labels) == 0:
        raise ValueError("kNN needs a non-empty bank and query set")
    require_labels(bank, query)
    n_classes = int(max(bank.labels.max(), query.labels.max())) + 1
    scores = knn_scores(query.feats, bank.feats, bank.labels, n_classes, k=k, T=T)
    return {
        **classification_report(scores, query.labels, query.keys),
        "k": min(k, len(bank.labels)),
        "t": T,
        "bank": len(bank.labels),
        "query": len(query.labels),
    }
