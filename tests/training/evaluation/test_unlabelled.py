"""Anonymised fMoW splits carry category -1: scoring them must say so, not index a class -1."""

from __future__ import annotations

import pytest
import torch

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.models.knn import Features, knn_top1


def _features(labels: list[int]) -> Features:
    feats = torch.nn.functional.normalize(
        torch.randn(len(labels), 8, generator=torch.Generator().manual_seed(0))
    )
    return Features(feats, torch.tensor(labels), [str(i) for i in range(len(labels))])


def test_knn_refuses_unlabelled_samples_with_one_clear_error():
    labelled = _features([0, 1, 0, 1])
    assert 0 <= knn_top1(labelled, labelled, k=2)["top1"] <= 100
    with pytest.raises(GeoSSLError, match="no category label"):
        knn_top1(labelled, _features([-1, -1]), k=2)
    with pytest.raises(GeoSSLError, match="no category label"):
        knn_top1(_features([-1, 0, 1, -1]), labelled, k=2)
