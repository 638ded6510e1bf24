"""The dataset card's checks and readings live in geo_ssl.schemas.dataset_card (issue 18, items 1 and 7):
the trainer reads a card without importing the shard-writing code, and the pipeline's names stay the same."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.schemas import dataset_card


def test_reading_a_card_imports_no_pipeline_stage_and_the_pipeline_names_are_the_same() -> None:
    code = (
        "import sys, geo_ssl.schemas.dataset_card\n"
        "print(sorted(m for m in sys.modules if m.startswith('geo_ssl') and not m.startswith("
        "('geo_ssl.schemas', 'geo_ssl.pipeline.common')) and m not in ('geo_ssl', 'geo_ssl.pipeline')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
    from geo_ssl.pipeline.shards import card, options, sample_extras

    assert card.check_card is dataset_card.check_card and card.card_problems is dataset_card.card_problems
    assert sample_extras.refuse_temporal is dataset_card.refuse_temporal
    assert options.LAYOUTS is dataset_card.LAYOUTS == ("locations", "views")


@pytest.mark.parametrize(
    "card, why",
    [
        ({"splits": {}}, None),
        ({"splits": {}, "temporal_positives": True}, None),
        ({"splits": {}, "dataset": "geoimagenet", "temporal_positives": False}, "geoimagenet has one image"),
        ({"splits": {}, "layout": "views"}, 'layout "views"'),
        ([1, 2], None),  # not a card: check_card's to refuse, not this reading's
    ],
)
def test_temporal_pairs_are_read_from_the_card(card, why, tmp_path: Path) -> None:
    missing = dataset_card.temporal_pairs_missing(card)
    assert (missing is None) if why is None else why in missing
    (tmp_path / "dataset.json").write_text(json.dumps(card))
    if why is None:
        dataset_card.refuse_temporal(str(tmp_path), "moco+geo+tp")
    else:
        with pytest.raises(
            GeoSSLError, match=r"--method moco\+geo\+tp: temporal positives .*; use moco\+geo$"
        ):
            dataset_card.refuse_temporal(str(tmp_path), "moco+geo+tp")


def test_no_card_or_a_broken_one_is_no_refusal_and_names_need_a_sound_list(tmp_path: Path) -> None:
    dataset_card.refuse_temporal(str(tmp_path), "moco+tp")  # no card
    (tmp_path / "dataset.json").write_text("{not json")
    assert dataset_card.load_card(str(tmp_path)) is None
    dataset_card.refuse_temporal(str(tmp_path), "moco+tp")
    assert dataset_card.category_names({"categories": [{"id": 0, "name": "n01440764"}]}) == {0: "n01440764"}
    assert dataset_card.category_names({"categories": [{"id": 0}]}) is None  # not a usable list
    assert dataset_card.category_names({"splits": {}}) is None
    with pytest.raises(GeoSSLError, match=r"^x/dataset.json: bad dataset card: has no splits$"):
        dataset_card.check_card({}, "x/dataset.json")
