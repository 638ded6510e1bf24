"""`make ablation` end to end at toy scale: every arm trains, is evaluated and lands in the table."""

from __future__ import annotations

import json

import pytest

from geo_ssl.training.demo import evaluate_backbone
from tests.bench.ablation import cpu_has_bf16, main


def test_ablation_runs_every_arm_and_refuses_stale_data(tmp_path, capsys):
    out = tmp_path / "abl"
    args = ["--out", str(out), "--locations", "30", "--steps", "2", "--epochs", "1", "--seeds", "0",
            "--batch-size", "8", "--queue", "16", "--clusters", "2"]  # fmt: skip
    main(args)
    table = (out / "ablation.md").read_text()
    for row in (
        "| random init |",
        "| orientation histogram (48, hand-made) |",
        "| colour histogram (64, hand-made) |",
    ):
        assert table.count(row) == 3  # category table, mechanism checks, every seed
    for row in (
        "| moco |",
        "| moco+tp |",
        "| moco+geo |",
        "| moco+geo+tp |",
        "| moco, +TP's crop (control) |",
        "| supervised",
    ):
        assert table.count(row) == 4  # ... and the verdicts
    assert "synth-fmow --scene toy" in table and "head BN on" in table
    assert "moco: 0.4-1 of the whole view" in table and "gassl: 0.4-1 of the central square" in table
    assert "## Mechanism checks" in table and "linear standardised vs best hand-made" in table
    assert f"amp {'bf16' if cpu_has_bf16() else 'off'}," in table  # --amp auto resolved, and recorded
    rows = json.loads((out / "ablation.json").read_text())["rows"]
    assert {r["steps"] for r in rows if r["method"].startswith("moco")} == {2}
    assert {r["crop"] for r in rows if r["method"].startswith("moco")} == {"moco", "gassl"}
    for r in rows:
        assert all(0 <= r[k] <= 100 for k in ("knn_top1", "linear_top1", "linear_std_top1", "geo_top1"))
        assert -1 <= r["diff_cos"] <= 1 and r["temporal_gap"] == r["same_cos"] - r["diff_cos"]
        assert 0 < r["pairs"] <= 6 and r["geo_floor"] > 0  # 6 val locations (30 x 20%)
    demo = evaluate_backbone(str(out / "random-s0.pth"), str(out / "data"), 64, 0)  # make demo's evaluation
    random_row = next(r for r in rows if r["method"] == "random init")
    assert (demo["knn_top1"], demo["linear_top1"]) == (random_row["knn_top1"], random_row["linear_top1"])
    cached = {p.name: p.stat().st_mtime_ns for p in (out / "evals").iterdir()}
    assert len(cached) == 2 + 7  # hand-made, random init, supervised, 5 SSL arms
    main(args)  # a rerun reuses the data, the finished runs and their evaluations
    assert "== moco, seed 0" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (out / "evals").iterdir()} == cached
    assert (out / "ablation.md").read_text().split("\nWall time")[0] == table.split("\nWall time")[0]
    with pytest.raises(SystemExit, match="built with other settings"):
        main([*args, "--scene", "fmow"])
