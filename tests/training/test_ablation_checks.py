"""The ablation's hand-made reference features and its two mechanism checks, on images and features whose
answer is known by construction."""

from __future__ import annotations

import pytest
import torch

from geo_ssl.training.data.augment import IMAGENET_MEAN, IMAGENET_STD
from geo_ssl.training.models.knn import Features
from tests.bench.ablation import verdict
from tests.bench.ablation_checks import (
    location_of,
    majority_floor,
    relabelled,
    standardised,
    temporal_invariance,
    view_pairs,
)
from tests.bench.handmade_features import ColourHistogram, OrientationHistogram, unnormalise


def normalised(rgb: torch.Tensor) -> torch.Tensor:
    """What the eval loader yields for RGB images in 0-1 (ImageNet normalisation)."""
    return (rgb - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def stripes(vertical: bool, size: int = 16) -> torch.Tensor:
    """Grey 0/1 stripes, 2 px wide: vertical ones vary along x only, horizontal ones along y only."""
    line = (torch.arange(size) // 2 % 2).float()
    grey = line.view(1, size).expand(size, size) if vertical else line.view(size, 1).expand(size, size)
    return grey.expand(3, size, size).unsqueeze(0)


def test_unnormalise_recovers_the_loaders_rgb():
    rgb = torch.rand(2, 3, 8, 8)
    assert torch.allclose(unnormalise(normalised(rgb)), rgb, atol=1e-6)


def test_orientation_histogram_puts_stripes_in_their_orientation_bin():
    hog = OrientationHistogram()
    vertical, horizontal = hog(normalised(stripes(True))), hog(normalised(stripes(False)))
    assert vertical.shape == (1, 48) and hog.dim == 48
    assert torch.allclose(vertical.norm(dim=1), torch.ones(1))
    by_bin = vertical.view(12, 4).sum(1), horizontal.view(12, 4).sum(1)
    # a gradient along x is orientation 0 (bin 0), along y 90 degrees (bin 6 of 12 x 15 degrees)
    assert by_bin[0].argmax() == 0 and by_bin[0][1:].abs().max() < 1e-6
    assert by_bin[1].argmax() == 6 and (by_bin[1].sum() - by_bin[1][6]).abs() < 1e-6
    # the 2 x 2 cells see the same stripes: equal weight in each
    cells = vertical.view(12, 4)[0]
    assert torch.allclose(cells, cells.mean().expand(4), atol=1e-6)
    flat = hog(normalised(torch.full((1, 3, 16, 16), 0.5)))
    assert torch.count_nonzero(flat) == 0  # no gradient, no votes (normalize leaves zeros)


def test_colour_histogram_counts_joint_rgb_bins():
    colour = ColourHistogram()
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 1.0
    half = red.clone()
    half[:, :, :, 4:] = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)  # right half blue
    h_red, h_half = colour(normalised(red)), colour(normalised(half))
    assert h_red.shape == (1, 64) and colour.dim == 64
    assert h_red[0, 48] == pytest.approx(1.0) and h_red.sum() == pytest.approx(1.0)  # r=3, g=0, b=0
    assert h_half[0, 48] == pytest.approx(2**-0.5) and h_half[0, 3] == pytest.approx(2**-0.5)  # b=3


def keyed(places: dict[str, int]) -> list[str]:
    return [f"val/{place}/{view:02d}" for place, n in places.items() for view in range(n)]


def test_view_pairs_pair_two_dates_of_a_place_against_two_places_deterministically():
    keys = keyed({"a": 3, "b": 2, "c": 4, "solo": 1})
    same, different = view_pairs(keys, seed=7)
    assert len(same) == len(different) == 3  # "solo" has no second date
    assert all(i != j and location_of(keys[i]) == location_of(keys[j]) for i, j in same)
    assert all(location_of(keys[i]) != location_of(keys[j]) for i, j in different)
    assert {location_of(keys[i]) for i, _ in same} == {"val/a", "val/b", "val/c"}
    assert view_pairs(keys, seed=7) == (same, different)


def test_temporal_invariance_is_the_gap_between_same_place_and_other_place_cosines():
    keys = keyed({"a": 2, "b": 2, "c": 2})
    place = {"val/a": [1.0, 0.0], "val/b": [0.0, 1.0], "val/c": [-1.0, 0.0]}
    invariant = Features(torch.tensor([place[location_of(k)] for k in keys]), torch.zeros(6), keys)
    result = temporal_invariance(invariant)
    assert result["same"] == pytest.approx(1.0) and result["pairs"] == 3
    assert result["different"] < 0.5 and result["gap"] == pytest.approx(1.0 - result["different"])
    noise = Features(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), torch.zeros(6), keys)
    assert temporal_invariance(noise)["gap"] < result["gap"]
    with pytest.raises(ValueError, match="two views"):
        temporal_invariance(Features(torch.ones(2, 2), torch.zeros(2), keyed({"a": 1, "b": 1})))


def test_standardised_uses_the_train_splits_statistics():
    train = Features(torch.tensor([[1.0, 5.0], [3.0, 5.0]]), torch.tensor([0, 1]), ["t0", "t1"])
    val = Features(torch.tensor([[2.0, 6.0]]), torch.tensor([1]), ["v0"])
    ztrain, zval = standardised(train, val)
    assert torch.allclose(ztrain.feats.mean(0), torch.zeros(2))
    assert torch.allclose(ztrain.feats[:, 1], torch.zeros(2))  # a constant dimension stays finite
    assert zval.feats.tolist() == [[0.0, 1.0]] and zval.labels.tolist() == [1]


def test_geo_labels_and_majority_floor():
    feats = Features(torch.zeros(4, 2), torch.tensor([0, 0, 1, 1]), list("abcd"))
    geo = relabelled(feats, torch.tensor([2, 2, 2, 0]))
    assert geo.labels.tolist() == [2, 2, 2, 0] and geo.feats is feats.feats
    with pytest.raises(ValueError, match="3 labels for 4"):
        relabelled(feats, torch.tensor([0, 1, 2]))
    assert majority_floor(torch.tensor([2, 2, 2, 0]), torch.tensor([2, 0, 1, 1])) == pytest.approx(25.0)


def test_verdict_counts_a_gap_only_beyond_both_spreads():
    assert verdict([60.0, 62.0, 64.0], [50.0, 51.0, 52.0])[2] == "above"  # gap 11.5 > 2 + 1
    assert verdict([50.0, 56.0], [52.0, 53.0])[2] == "inside"  # gap +0.5
    gap, room, word = verdict([40.0, 41.0], [67.2])  # a hand-made row: one deterministic value
    assert word == "below" and gap == pytest.approx(-26.7) and room == pytest.approx(0.7071, abs=1e-4)
