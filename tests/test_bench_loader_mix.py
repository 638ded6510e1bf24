"""The loader benchmark's held-out mix (tests/bench/bench_loader_mix.py): views rendered at sizes drawn
from the real fMoW val listing, with JSONs that agree with the pixels; and a clear skip without it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.bench.bench_loader_mix import SOURCE_BYTES_PER_PX, listing_sizes_in_synth, main


def test_listing_sizes_drive_the_rendered_views(tmp_path: Path) -> None:
    from geo_ssl.pipeline.fmow.synth import synth_fmow

    sizes = np.array([30_000, 60_000])  # bytes: 108 and 217 kpx at SOURCE_BYTES_PER_PX
    with listing_sizes_in_synth(sizes, seed=0):
        synth_fmow(str(tmp_path / "fmow"), locations=3, seed=5, realistic_sizes=True, workers=1)
    views = sorted((tmp_path / "fmow").rglob("*_rgb.jpg"))
    assert views
    for path in views:
        with Image.open(path) as im:
            w, h = im.size
        assert min(abs(w * h - b / SOURCE_BYTES_PER_PX) / (b / SOURCE_BYTES_PER_PX) for b in sizes) < 0.02
        meta = json.loads(path.with_suffix(".json").read_text())
        assert (meta["img_width"], meta["img_height"]) == (w, h)
        boxes = meta["bounding_boxes"]
        for entry in [boxes] if isinstance(boxes, dict) else boxes:
            x, y, bw, bh = entry["box"]
            assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h
    from geo_ssl.pipeline.fmow import synth

    assert synth._view_specs.__name__ == "_view_specs"  # restored on exit


def test_skips_with_the_reason_without_the_listing(tmp_path: Path, capsys) -> None:
    assert main(["--out", str(tmp_path), "--listing", str(tmp_path / "absent.csv")]) == 0
    assert "skipped" in capsys.readouterr().out and not (tmp_path / "data").exists()
