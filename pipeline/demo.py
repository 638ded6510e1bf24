"""`make demo`: the whole main job on a small built-in default, end to end, in a few minutes on 2 cores."""

from __future__ import annotations

import argparse
import sys
import time

from geo_ssl.pipeline.build import BuildConfig, build
from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.shards.options import ShardOptions


def run_demo(out: str, locations: int = 300, k: int = 16, seed: int = 0, train: bool = True) -> dict:
    """synth-fmow -> build -> validate -> report (-> short pretraining and evaluation)."""
    from geo_ssl.pipeline.fmow.synth import synth_fmow
    from geo_ssl.pipeline.report import report
    from geo_ssl.pipeline.shards.validate import validate

    t0 = time.time()
    root = fsio.join(out, "fmow-synth")
    build_dir = fsio.join(out, "build")
    _drop_outdated(out, root)
    print(f"== 1/4 synth-fmow: {locations} locations in the fMoW-rgb layout -> {root}")
    print(synth_fmow(root, locations=locations, seed=seed).line())
    print(f"== 2/4 build: index, cluster (k={k}), write-shards -> {build_dir}")
    build(
        BuildConfig(
            root=root, out=build_dir, k=k, seed=seed, shards=ShardOptions(seed=seed, shard_bytes="2MB")
        )
    )
    print("== 3/4 validate and report")
    rep = validate(build_dir)
    print(rep.line())
    if not rep.ok:
        raise GeoSSLError(f"{build_dir}: validation failed")
    plots = report(build_dir)
    results: dict = {"build": build_dir, "plots": plots}
    if train:
        from geo_ssl.training.demo import run_demo_training

        print("== 4/4 short pretraining (moco+geo+tp, resnet18, CPU) and evaluation")
        results["training"] = run_demo_training(build_dir, fsio.join(out, "run"), epochs=6)
    from geo_ssl.pipeline.geoimagenet.demo import run_geoimagenet_demo

    print("== GeoImageNet: the Flickr path on a tiny synthetic ImageNet with a local Flickr API stand-in")
    results["geoimagenet"] = run_geoimagenet_demo(out, seed=seed)
    print(f"\nDone in {time.time() - t0:.0f} s.")
    print(f"  shards:   {build_dir}/train-*.tar, {build_dir}/val-*.tar (manifest.parquet, dataset.json)")
    print(f"  index:    {build_dir}/index/ (images.parquet is GeoParquet; rejects.parquet, clusters.parquet)")
    print(f"  plots:    {', '.join(plots)}")
    if train:
        print(f"  training: {out}/run/ (checkpoints, metrics.jsonl, TensorBoard)")
    print(f"  geoimagenet: {out}/geoimagenet/ (harvest/, index/, train-*.tar, val-*.tar)")
    return results


def _drop_outdated(out: str, root: str) -> None:
    """A demo folder from an older synth-fmow generator is the demo's own output: start it afresh, rather
    than stop as synth-fmow must for a user's folder."""
    import json
    import shutil

    from geo_ssl.pipeline.fmow.synth import GENERATOR, STAMP

    stamp = fsio.join(root, STAMP)
    if not fsio.is_local(out) or not fsio.exists(stamp):
        return
    try:
        found = json.loads(fsio.read_bytes(stamp)).get("generator")
    except ValueError:
        found = None
    if found != GENERATOR:
        print(f"== {out} holds a demo made by {found!r}; starting it afresh with {GENERATOR!r}")
        shutil.rmtree(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="demo-out")
    p.add_argument("--locations", type=int, default=300)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--no-train", dest="train", action="store_false")
    args = p.parse_args(argv)
    try:
        run_demo(args.out, locations=args.locations, k=args.k, train=args.train)
    except GeoSSLError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
