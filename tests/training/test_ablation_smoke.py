"""`make ablation` end to end at toy scale: every arm trains, is evaluated and lands in the table."""

from __future__ import annotations

import json

import pytest

from tests.bench.ablation import cpu_has_bf16, main


def test_ablation_runs_every_arm_and_refuses_stale_data(tmp_path, capsys):
    out = tmp_path / "abl"
    args = ["--out", str(out), "--locations", "30", "--steps", "4", "--epochs", "2", "--seeds", "0",
            "--batch-size", "8", "--queue", "16", "--clusters", "2"]  # fmt: skip
    main(args)
    table = (out / "ablation.md").read_text()
    for row in (
        "| random init |",
        "| moco |",
        "| moco+tp |",
        "| moco+geo |",
        "| moco+geo+tp |",
        "| supervised",
    ):
        assert row in table
    assert "synth-fmow --scene toy" in table and "head BN on, crop scale 0.4-1" in table
    assert f"amp {'bf16' if cpu_has_bf16() else 'off'}," in table  # --amp auto resolved, and recorded
    rows = json.loads((out / "ablation.json").read_text())["rows"]
    assert {r["steps"] for r in rows if r["method"].startswith("moco")} == {4}
    assert all(0 <= r["knn_top1"] <= 100 and 0 <= r["linear_top1"] <= 100 for r in rows)
    main(args)  # a rerun reuses the data and the finished runs
    assert "== moco, seed 0" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="built with other settings"):
        main([*args, "--scene", "fmow"])
