"""Macro F1 and the per-location vote (training/models/metrics.py), and that kNN and the linear probe
report them (issue 18, item 5)."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import f1_score

from geo_ssl.training.evaluation.linear_probe import train_linear
from geo_ssl.training.models.knn import Features, knn_top1
from geo_ssl.training.models.metrics import classification_report, format_report, location_vote, macro_f1


def test_macro_f1_matches_sklearn():
    gen = torch.Generator().manual_seed(0)
    for n_classes in (2, 5, 17):
        labels = torch.randint(0, n_classes, (300,), generator=gen)
        pred = torch.where(torch.rand(300, generator=gen) < 0.6, labels, torch.randint(0, n_classes, (300,)))
        want = f1_score(labels.numpy(), pred.numpy(), average="macro") * 100
        assert macro_f1(pred, labels) == pytest.approx(want, abs=1e-9)
    # a class predicted but never true, and one true but never predicted, both count as F1 0
    labels, pred = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 0, 1, 3, 1])
    want = f1_score(labels.numpy(), pred.numpy(), average="macro", zero_division=0) * 100
    assert macro_f1(pred, labels) == pytest.approx(want) and want != pytest.approx(60.0)  # not top-1


def _probs(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_views_of_a_location_vote_with_mean_probabilities():
    # location A (label 0): two views lean weakly to class 1, one view is sure of class 0;
    # per image 1 of 3 is right, the location's mean probability picks class 0
    # location B (label 1): one view, right
    probs = _probs([[0.45, 0.55], [0.45, 0.55], [0.95, 0.05], [0.2, 0.8]])
    labels = torch.tensor([0, 0, 0, 1])
    keys = ["train-a_1/00", "train-a_1/01", "train-a_1/02", "train-b_2/00"]
    pred, loc_labels, multi = location_vote(probs, labels, keys)
    assert pred.tolist() == [0, 1] and loc_labels.tolist() == [0, 1] and multi == 1
    report = classification_report(probs, labels, keys)
    assert report["top1"] == pytest.approx(50.0)  # 2 of 4 images
    assert report["per_location_top1"] == pytest.approx(100.0)  # both locations
    assert report["locations"] == 2 and report["multi_view_locations"] == 1
    assert "per-location top-1: 100.00%" in format_report(report)


def test_single_view_data_has_no_per_location_figure():
    probs, labels = _probs([[0.9, 0.1], [0.3, 0.7]]), torch.tensor([0, 0])
    for keys in (["val-x/00", "val-y/00"], ["val-x", "val-y"], None, ["", ""]):
        report = classification_report(probs, labels, keys)
        assert report["per_location_top1"] is None and report["per_location_macro_f1"] is None
        assert "per-location top-1: n/a" in format_report(report)


def _features(labels: list[int], keys: list[str], seed: int) -> Features:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.eye(4)[: max(labels) + 1] * 3
    feats = centres[torch.tensor(labels)] + torch.randn(len(labels), 4, generator=gen)
    return Features(feats, torch.tensor(labels), keys)


def test_knn_and_linear_probe_report_f1_and_per_location():
    bank = _features([0, 1, 2] * 20, [f"train-{i}/00" for i in range(60)], seed=0)
    labels = [0, 0, 1, 1, 1, 2] * 5
    query = _features(labels, [f"val-{i // 3}/{i % 3:02d}" for i in range(30)], seed=1)
    knn = knn_top1(bank, query, k=5)
    assert {"top1", "macro_f1", "per_location_top1", "k", "t", "bank", "query"} <= set(knn)
    assert knn["locations"] == 10 and 0 <= knn["macro_f1"] <= 100 and 0 <= knn["per_location_top1"] <= 100
    probe = train_linear(bank, query, 3, epochs=5, lr=0.5, batch_size=16)
    assert probe["reported"] == "last-epoch" and 1 <= probe["best_epoch"] <= 5
    assert probe["best_epoch_top1"] >= probe["top1"] - 1e-9  # the best of all epochs, the last included
    assert {"top1", "top5", "macro_f1", "per_location_top1", "train_loss_last"} <= set(probe)
