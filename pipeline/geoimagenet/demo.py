"""The GeoImageNet part of `make demo`: synth-imagenet, the Flickr stand-in, build, validate; a few seconds."""

from __future__ import annotations

import os
import secrets
import time

from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.geoimagenet.build import GeoImageNetBuild, build_geoimagenet
from geo_ssl.pipeline.geoimagenet.flickr_standin import FlickrStandin, load_photo_table
from geo_ssl.pipeline.geoimagenet.harvest import HarvestOptions
from geo_ssl.pipeline.geoimagenet.synth import synth_imagenet
from geo_ssl.pipeline.shards.options import ShardOptions


def run_geoimagenet_demo(out: str, classes: int = 8, per_class: int = 20, k: int = 8, seed: int = 0) -> dict:
    """Tiny GeoImageNet end to end against a local stand-in of the Flickr API (throwaway key and secret)."""
    from geo_ssl.pipeline.shards.validate import validate

    t0 = time.time()
    synth_dir = fsio.join(out, "imagenet-synth")
    build_dir = fsio.join(out, "geoimagenet")
    print(f"== GeoImageNet 1/3 synth-imagenet: {classes} classes x {per_class} images -> {synth_dir}")
    world = synth_imagenet(synth_dir, classes=classes, per_class=per_class, seed=seed)
    print(world["line"])
    key, secret = secrets.token_hex(16), secrets.token_hex(8)
    saved = {n: os.environ.get(n) for n in ("FLICKR_API_KEY", "FLICKR_API_SECRET")}
    os.environ.update(FLICKR_API_KEY=key, FLICKR_API_SECRET=secret)
    try:
        with FlickrStandin(load_photo_table(world["photos"]), key, secret, latency=0.01, fault_rate=0.05,
                           seed=seed) as standin:  # fmt: skip
            print(f"== GeoImageNet 2/3 build: harvest-flickr (stand-in at {standin.url}, YFCC join), "
                  f"index-imagenet, cluster (k={k}), write-shards -> {build_dir}")  # fmt: skip
            cfg = GeoImageNetBuild(
                root=world["root"], urls=world["urls"], out=build_dir, k=k, seed=seed, yfcc=world["yfcc"],
                words=world["words"],
                harvest=HarvestOptions(api_url=standin.url, rate_limit=3600 * 100, concurrency=4, retry_base=0.05),
                shards=ShardOptions(seed=seed, shard_bytes="1MB", resize=96),
            )  # fmt: skip
            results = build_geoimagenet(cfg)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    print("== GeoImageNet 3/3 validate")
    rep = validate(build_dir)
    print(rep.line())
    if not rep.ok:
        raise GeoSSLError(f"{build_dir}: validation failed")
    print(f"GeoImageNet done in {time.time() - t0:.0f} s: {build_dir}/train-*.tar, val-*.tar"
          " (pretrain with --method moco or moco+geo; +tp does not apply)")  # fmt: skip
    return {"build": build_dir, **results}
