"""report on a stale sample index, validate on a bad dataset card (issue 17, items 30, 32): real subprocesses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.shards.card import card_problems, check_card
from tests.pipeline.test_hardening_cli import built, error_line, root, run_cli  # noqa: F401 (fixtures)

# --- item 30: report on a folder whose sample_index.parquet is another build's ------------------------


def test_report_on_a_stale_sample_index_is_one_line(root, built, tmp_path):  # noqa: F811
    out = Path(shutil.copytree(built, tmp_path / "out"))
    other = tmp_path / "other"
    proc = run_cli("build", "--root", str(root), "--out", str(other), "--k", "2", "--workers", "1",
                   "--resize", "40", "--seed", "9")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    shutil.copy(other / "sample_index.parquet", out / "sample_index.parquet")

    proc = run_cli("report", str(out))
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc)
    assert f"{out / 'sample_index.parquet'}: does not match the shards" in line and "stale" in line, line

    (out / "sample_index.parquet").unlink()  # the way out the message names: the index's source images
    proc = run_cli("report", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "report" / "contact_sheet.png").exists()


# --- item 32: validate checks the dataset card's fields and types ---------------------------------------


@pytest.mark.parametrize(
    "edit, expect",
    [
        (lambda card: {**card, "k": "four"}, "dataset.json: k must be int, got 'four'"),
        (lambda card: [card], "dataset.json: is a JSON list, not an object"),
        (lambda card: {**card, "k": 0}, "dataset.json: k must be at least 1, got 0"),
        (lambda card: {**card, "layout": "rows"}, "dataset.json: layout 'rows' is not one of"),
        (lambda card: {**card, "categories": [{"id": "0", "name": "x"}]}, "dataset.json: categories: every"),
        (lambda card: {**card, "geo_clusters": {**card["geo_clusters"], "k": 3}}, "geo_clusters.k 3 differs"),
        (lambda card: {**card, "temporal_positives": "no"}, "temporal_positives must be bool"),
    ],
    ids=["string-k", "list-card", "zero-k", "bad-layout", "bad-categories", "cluster-k", "string-tp"],
)
def test_validate_reports_a_bad_dataset_card(edit, expect, built, tmp_path):  # noqa: F811
    out = Path(shutil.copytree(built, tmp_path / "out"))
    card = json.loads((out / "dataset.json").read_text())
    assert card_problems(card) == [] and check_card(card, "dataset.json") is card
    (out / "dataset.json").write_text(json.dumps(edit(card)))

    proc = run_cli("validate", str(out), "--workers", "1")
    assert proc.returncode == 1, proc.stdout
    assert "[ok]" not in proc.stdout and expect in proc.stdout, proc.stdout
    with pytest.raises(GeoSSLError, match=r"x/dataset\.json: bad dataset card: "):
        check_card(edit(card), "x/dataset.json")
