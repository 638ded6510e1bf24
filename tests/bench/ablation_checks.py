"""What +TP and +Geo are for, measured on frozen features: the ablation's two mechanism checks.

- Temporal invariance (+TP's purpose): on the val split, the mean cosine similarity of the features of two
  views (dates) of one location, against that of two views of two different locations; the gap (same -
  different) is what +TP should widen. Pairs are drawn once with a fixed seed from the keys alone, so
  every arm is scored on the same pairs.
- Geo decodability (+Geo's purpose): the category probe's linear classifier, trained on the K-means geo
  cluster id (geo_cluster) of the train split and scored on the val split; the floor is the rate of the
  train split's most common cluster on val (what always guessing it scores).

Standardisation (z-score with the train split's per-dimension mean and std) is here because it flips
the linear verdict on these features: the ablation reports the probes on raw and standardised features.
"""

from __future__ import annotations

import random
from collections import defaultdict

import torch
import torch.nn.functional as F

from geo_ssl.training.models.knn import Features


def location_of(key: str) -> str:
    """The location of an all-views eval key `{location key}/{NN}`."""
    return key.rsplit("/", 1)[0]


def view_pairs(keys: list[str], seed: int = 0) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(same, different): one pair of two views of each location with at least two views, and as many
    pairs of views of two different locations (each such location against the next in a seeded shuffle)."""
    views: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        views[location_of(key)].append(i)
    rng = random.Random(seed)
    places = sorted(loc for loc, idx in views.items() if len(idx) >= 2)
    same = [tuple(rng.sample(views[loc], 2)) for loc in places]
    order = rng.sample(range(len(places)), len(places))
    different = []
    if len(order) >= 2:
        for a, b in zip(order, order[1:] + order[:1], strict=True):
            different.append((rng.choice(views[places[a]]), rng.choice(views[places[b]])))
    return same, different  # type: ignore[return-value]


def temporal_invariance(features: Features, seed: int = 0) -> dict[str, float]:
    """Mean cosine similarity of same-location and different-location view pairs, and their gap."""
    same, different = view_pairs(features.keys, seed)
    if not same or not different:
        raise ValueError("temporal invariance needs at least two locations with two views each")
    unit = F.normalize(features.feats.float(), dim=1)

    def mean_cosine(pairs: list[tuple[int, int]]) -> float:
        a, b = (torch.tensor(side) for side in zip(*pairs, strict=True))
        return (unit[a] * unit[b]).sum(1).mean().item()

    s, d = mean_cosine(same), mean_cosine(different)
    return {"same": s, "different": d, "gap": s - d, "pairs": len(same)}


def standardised(train: Features, val: Features) -> tuple[Features, Features]:
    """Both splits z-scored per dimension with the train split's mean and std (constant dimensions -> 0)."""
    mean, std = train.feats.mean(0), train.feats.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (
        Features((train.feats - mean) / std, train.labels, train.keys),
        Features((val.feats - mean) / std, val.labels, val.keys),
    )


def relabelled(features: Features, labels: torch.Tensor) -> Features:
    """The same features with other labels (the geo cluster ids instead of the categories)."""
    if len(labels) != len(features.labels):
        raise ValueError(f"{len(labels)} labels for {len(features.labels)} feature rows")
    return Features(features.feats, labels.long(), features.keys)


def majority_floor(train_labels: torch.Tensor, val_labels: torch.Tensor) -> float:
    """Top-1 (%) on val of always guessing the train split's most common label."""
    majority = torch.bincount(train_labels).argmax()
    return (val_labels == majority).float().mean().item() * 100
