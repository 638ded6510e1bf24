"""`make demo`: the whole main job on a small built-in default, end to end, in a few minutes on 2 cores."""

from __future__ import annotations

import argparse
import sys
import time

from geo_ssl.pipeline.build import BuildConfig, build
from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.shards.options import ShardOptions

#: The demo's classes: ten fMoW categories whose toy-scene drawings differ in shape (the ablation's too).
TOY_CATEGORIES = ("airport", "crop_field", "golf_course", "interchange", "parking_lot_or_garage", "solar_farm",
                  "stadium", "storage_tank", "swimming_pool", "wind_farm")  # fmt: skip


def run_demo(
    out: str, locations: int = 800, k: int = 8, seed: int = 0, train: bool = True, steps: int | None = None
) -> dict:
    """synth-fmow (toy scene) -> build -> validate -> report -> the GeoImageNet path (-> short pretraining
    and the evidence: the closing lines compare the trained encoder with random init). The data and the
    training recipe are the toy ablation's (BENCHMARKS.md), where the evidence held on every seed."""
    from geo_ssl.pipeline.fmow.synth import synth_fmow
    from geo_ssl.pipeline.geoimagenet.demo import run_geoimagenet_demo
    from geo_ssl.pipeline.report import report
    from geo_ssl.pipeline.shards.validate import validate

    t0 = time.time()
    root = fsio.join(out, "fmow-synth")
    build_dir = fsio.join(out, "build")
    _drop_outdated(out, {"locations": locations, "k": k, "seed": seed, "steps": steps})
    print(
        f"== 1/4 synth-fmow --scene toy: {locations} locations of {len(TOY_CATEGORIES)} categories -> {root}"
    )
    print(synth_fmow(root, locations=locations, seed=seed, categories=TOY_CATEGORIES, scene="toy").line())
    print(f"== 2/4 build: index, cluster (k={k}), write-shards (views at 64 px) -> {build_dir}")
    shards = ShardOptions(seed=seed, shard_bytes="2MB", resize=64)
    build(BuildConfig(root=root, out=build_dir, k=k, seed=seed, shards=shards))
    print("== 3/4 validate and report")
    rep = validate(build_dir)
    print(rep.line())
    if not rep.ok:
        raise GeoSSLError(f"{build_dir}: validation failed")
    plots = report(build_dir)
    results: dict = {"build": build_dir, "plots": plots}
    print("== GeoImageNet: the Flickr path on a tiny synthetic ImageNet with a local Flickr API stand-in")
    results["geoimagenet"] = run_geoimagenet_demo(out, seed=seed)
    if train:
        from geo_ssl.training.demo import EVAL_FILE, METHOD, STEPS, closing_lines, run_demo_training

        print(f"== 4/4 short pretraining ({METHOD}, resnet18, 64 px, CPU) and evaluation")
        results["training"] = run_demo_training(
            build_dir, fsio.join(out, "run"), steps=steps or STEPS, seed=seed
        )
    print(f"\nDone in {time.time() - t0:.0f} s.")
    print(f"  shards:   {build_dir}/train-*.tar, {build_dir}/val-*.tar (manifest.parquet, dataset.json)")
    print(f"  index:    {build_dir}/index/ (images.parquet is GeoParquet; rejects.parquet, clusters.parquet)")
    print(f"  plots:    {', '.join(plots)}")
    print(f"  geoimagenet: {out}/geoimagenet/ (harvest/, index/, train-*.tar, val-*.tar)")
    if train:
        print(f"  training: {out}/run/ (pretrain/: checkpoints, metrics.jsonl, TensorBoard; {EVAL_FILE})\n")
        print("\n".join(closing_lines(fsio.join(out, "run", EVAL_FILE))))
    return results


#: OUT/DEMO_STAMP: the settings a demo folder was made with (synth-fmow's generator included).
DEMO_STAMP = "demo-settings.json"


def _drop_outdated(out: str, settings: dict) -> None:
    """A demo folder made with other settings (another seed or size, an older generator or demo) is the
    demo's own output: start it afresh, rather than stop as synth-fmow must for a user's folder, or resume
    a run trained on other data."""
    import json
    import shutil

    from geo_ssl.pipeline.fmow.synth import GENERATOR, STAMP

    settings = {**settings, "generator": GENERATOR}
    stamp = fsio.join(out, DEMO_STAMP)
    ours = fsio.exists(stamp) or fsio.exists(fsio.join(out, "fmow-synth", STAMP))  # an older demo's folder
    if fsio.is_local(out) and ours:
        try:
            found = json.loads(fsio.read_bytes(stamp)) if fsio.exists(stamp) else None
        except ValueError:
            found = None
        if found != settings:
            print(f"== {out} holds a demo made with other settings ({found}); starting it afresh")
            shutil.rmtree(out)
    fsio.makedirs(out)
    fsio.atomic_write_text(stamp, json.dumps(settings, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="demo-out")
    p.add_argument("--locations", type=int, default=800)
    p.add_argument("--k", type=int, default=8, help="geo clusters")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the training and the random init")
    p.add_argument("--steps", type=int, default=None, help="pretraining steps (default: the ablation's 500)")
    p.add_argument("--no-train", dest="train", action="store_false")
    args = p.parse_args(argv)
    try:
        run_demo(
            args.out, locations=args.locations, k=args.k, seed=args.seed, train=args.train, steps=args.steps
        )
    except GeoSSLError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
