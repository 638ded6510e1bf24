"""`make demo`'s closing lines: the evidence figure, printed from the eval.json the demo wrote."""

from __future__ import annotations

import json
import re
from pathlib import Path

from geo_ssl.pipeline.demo import DEMO_STAMP, _drop_outdated
from geo_ssl.pipeline.fmow.synth import STAMP
from geo_ssl.training.demo import CHECKED_SEEDS, EVAL_FILE, closing_lines, demo_config, run_demo_training
from tests.bench.ablation import parse_args, run_config
from tests.shard_fixtures import make_train_val_shards

FIGURE = re.compile(r"^  (trained encoder|random init) \(.*\)\s+(\d+\.\d)%$")


def test_demo_trains_with_the_ablations_moco_tp_recipe(tmp_path):
    """The evidence rests on the ablation's seeds: the demo must train exactly that arm's recipe."""
    args = parse_args([])  # the ablation's defaults (--amp auto resolved as the demo resolves it)
    ablation = run_config("data", tmp_path, "moco+tp", args)
    demo = demo_config("data", str(tmp_path), seed=0)
    fields = ("method", "arch", "image_size", "batch_size", "moco_k", "moco_m", "temperature", "head_bn",
              "crop_scale", "amp", "lr", "epochs", "epoch_samples", "num_workers", "shuffle_buffer", "seed")  # fmt: skip
    assert {f: getattr(demo, f) for f in fields} == {f: getattr(ablation, f) for f in fields}
    assert demo.crop == "moco" and demo.epochs * demo.epoch_samples // demo.batch_size == args.steps


def test_closing_lines_print_the_figures_the_demo_wrote(tmp_path):
    shards = make_train_val_shards(tmp_path / "shards", n_train=36)  # batch 32 needs >= 32 locations
    out = tmp_path / "run"
    out.mkdir()
    results = run_demo_training(shards, str(out), steps=2, seed=3)
    written = json.loads((out / EVAL_FILE).read_text())
    assert written["seed"] == 3 and written["steps"] == 2 and written["method"] == "moco+tp"
    assert (out / "backbone-resnet18.pth").exists() and (out / "random-init-resnet18.pth").exists()
    lines = closing_lines(str(out / EVAL_FILE))
    n = written["pretrained"]
    assert len(lines) == 8 and lines[0] == (
        f"== Evidence: kNN top-1 (k=20) on frozen features, {n['n_val']} val images of 6 categories, "
        f"{n['n_train']} train images as the bank"
    )
    shown = {m[1]: float(m[2]) for line in lines if (m := FIGURE.match(line))}
    assert shown == {
        "trained encoder": round(written["pretrained"]["knn_top1"], 1),
        "random init": round(results["random_init"]["knn_top1"], 1),
    }
    assert f"seeds {', '.join(map(str, CHECKED_SEEDS))} (figures in BENCHMARKS.md)" in lines[4]
    assert lines[5] == "  another seed: python -m geo_ssl.pipeline.demo --seed N --out demo-N"
    assert lines[6].startswith("  Not shown: ") and "toy scene" in lines[7]
    assert len({line.index("%") for line in lines[1:3]}) == 1  # the two figures line up
    # the lines follow the file, not constants: other figures in eval.json, other lines
    written["pretrained"]["knn_top1"], written["random_init"]["knn_top1"] = 41.25, 52.5
    (out / EVAL_FILE).write_text(json.dumps(written))
    lines = closing_lines(str(out / EVAL_FILE))
    assert "  41.2%" in lines[1] and "  52.5%" in lines[2]
    assert lines[3].startswith("  margin ") and lines[3].endswith(
        " -11.2 points: NOT above random init on this seed"
    )


def test_a_demo_folder_with_other_settings_starts_afresh_and_a_foreign_one_is_kept(tmp_path, capsys):
    old = tmp_path / "demo-out"  # what the earlier demo left: synth-fmow's stamp, no demo stamp
    (old / "fmow-synth").mkdir(parents=True)
    (old / "fmow-synth" / STAMP).write_text(
        json.dumps({"generator": "geo-ssl synth-fmow 2", "locations": 300})
    )
    (old / "run").mkdir()
    _drop_outdated(str(old), {"locations": 800, "k": 8, "seed": 0, "steps": None})
    assert sorted(p.name for p in old.iterdir()) == [DEMO_STAMP]
    assert "starting it afresh" in capsys.readouterr().out
    (old / "build").mkdir()
    _drop_outdated(str(old), {"locations": 800, "k": 8, "seed": 0, "steps": None})  # same settings: kept
    assert (old / "build").is_dir()
    _drop_outdated(str(old), {"locations": 800, "k": 8, "seed": 1, "steps": None})  # another seed: afresh
    assert not (old / "build").exists()
    mine = tmp_path / "mine"
    (mine / "notes").mkdir(parents=True)
    _drop_outdated(str(mine), {"locations": 800, "k": 8, "seed": 0, "steps": None})
    assert (mine / "notes").is_dir()  # not a demo folder: nothing removed


README = Path(__file__).resolve().parents[1] / "README.md"
README_FIGURE = re.compile(
    r"== Evidence: kNN top-1 \(k=(\d+)\) on frozen features, (\d+) val images of (\d+) categories, (\d+) train"
)


def test_readme_shows_the_closing_lines_as_printed(tmp_path):
    """README.md's `make demo` block must be what closing_lines prints for the figures it shows: same
    wording, alignment and claims (the docs runner skips that block, since it is the demo itself)."""
    text = README.read_text()
    block = text[text.index("```text\nDone in") :].split("```", 2)[1].splitlines()
    shown = block[block.index(next(line for line in block if line.startswith("== Evidence"))) :]
    k, n_val, n_classes, n_train = map(int, README_FIGURE.match(shown[0]).groups())
    figures = {m[1]: float(m[2]) for line in shown if (m := FIGURE.match(line))}
    seed = int(re.search(r"seed (\d+)\)", shown[1])[1])
    steps = int(re.search(r"(\d+) steps", shown[1])[1])
    ev = {
        "method": "moco+tp",
        "steps": steps,
        "seed": seed,
        "knn": {"k": k},
        "pretrained": {"knn_top1": figures["trained encoder"], "n_val": n_val, "n_classes": n_classes,
                       "n_train": n_train},
        "random_init": {"knn_top1": figures["random init"]},
    }  # fmt: skip
    (tmp_path / EVAL_FILE).write_text(json.dumps(ev))
    assert shown == closing_lines(str(tmp_path / EVAL_FILE))
