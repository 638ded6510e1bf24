"""`geo-build-dataset build --source geoimagenet`: harvest -> index -> cluster -> write-shards in one run.

Every stage is resumable on its own (the harvest never asks an answered photo again, cluster and
write-shards skip finished work), so rerunning the same command after a crash continues where it stopped.
Config: the same TOML as the fMoW build, with `source = "geoimagenet"` and the keys below.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field

from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.geoimagenet.harvest import HarvestOptions
from geo_ssl.pipeline.shards.options import ShardOptions

KEYS = {"source", "root", "out", "k", "seed", "urls", "yfcc", "words", "credentials", "api_url", "rate_limit",
        "concurrency", "val_fraction", "shards"}  # fmt: skip


@dataclass
class GeoImageNetBuild:
    """Everything a GeoImageNet build needs."""

    root: str  # the ImageNet tree {wnid}/{wnid}_{index}.JPEG
    urls: str  # fall11_urls.txt
    out: str = "shards"
    k: int = 100
    seed: int = 0
    yfcc: str | None = None
    words: str | None = None
    credentials: str | None = None
    val_fraction: float = 0.2
    harvest: HarvestOptions = field(default_factory=HarvestOptions)
    shards: ShardOptions = field(default_factory=ShardOptions)


def read_config(path: str | None) -> dict:
    if path is None:
        return {}
    try:
        return tomllib.loads(fsio.read_bytes(path).decode("utf-8"))
    except FileNotFoundError:
        raise GeoSSLError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise GeoSSLError(f"{path}: not valid TOML ({exc})") from None


def load_config(path: str | None, flags: dict, shard: dict | None = None) -> GeoImageNetBuild:
    """Merge the TOML config with flags (flags win); errors name the file and key."""
    data = read_config(path)
    if unknown := sorted(set(data) - KEYS):
        raise GeoSSLError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(KEYS))}")
    merged = {**data, **{k: v for k, v in flags.items() if v is not None}}
    for need in ("root", "urls"):
        if not merged.get(need):
            raise GeoSSLError(
                f"GeoImageNet build: no {need} given: pass --{need} or set {need} in the config file"
            )
    shard = dict(shard or {})
    seed = int(shard.pop("seed", None) if shard.get("seed") is not None else merged.get("seed", 0))
    try:
        options = ShardOptions(**{**data.get("shards", {}), **shard, "seed": seed})
    except TypeError as exc:
        raise GeoSSLError(f"{path or 'flags'}: bad [shards] option ({exc})") from None
    hv = HarvestOptions()
    for name in ("api_url", "rate_limit", "concurrency"):
        if merged.get(name) is not None:
            setattr(hv, name, type(getattr(hv, name))(merged[name]))
    return GeoImageNetBuild(
        root=str(merged["root"]), urls=str(merged["urls"]), out=str(merged.get("out", "shards")),
        k=int(merged.get("k", 100)), seed=seed, yfcc=merged.get("yfcc"), words=merged.get("words"),
        credentials=merged.get("credentials"), val_fraction=float(merged.get("val_fraction", 0.2)),
        harvest=hv, shards=options,
    )  # fmt: skip


def build_geoimagenet(cfg: GeoImageNetBuild) -> dict:
    """Run the chain; prints one reconciling line per stage and returns their summaries."""
    from geo_ssl.pipeline.cluster import cluster
    from geo_ssl.pipeline.geoimagenet.harvest import harvest_flickr, status_line
    from geo_ssl.pipeline.geoimagenet.index import index_imagenet
    from geo_ssl.pipeline.shards.write import write_shards

    harvest_dir = fsio.join(cfg.out, "harvest")
    index_dir = fsio.join(cfg.out, "index")
    results: dict = {}
    s = harvest_flickr(cfg.urls, harvest_dir, cfg.harvest, credentials=cfg.credentials, yfcc=cfg.yfcc)
    print(s.line())
    print(status_line(s))
    results["harvest"] = s.as_dict()
    s = index_imagenet(
        cfg.root, harvest_dir, index_dir, val_fraction=cfg.val_fraction, seed=cfg.seed, words=cfg.words
    )
    print(s.line())
    results["index"] = s.as_dict()
    stats_url = fsio.join(index_dir, "cluster_stats.json")
    stats = json.loads(fsio.read_bytes(stats_url)) if fsio.exists(stats_url) else {}
    if stats.get("k") == cfg.k and stats.get("seed") == cfg.seed and stats.get("inputs") == s.written:
        print(f"cluster: complete in {index_dir} (k={cfg.k}, seed={cfg.seed}), skipped")
    else:
        stats = cluster(index_dir, k=cfg.k, seed=cfg.seed)
        print(stats["line"])
    results["cluster"] = stats
    s = write_shards(index_dir, cfg.out, options=cfg.shards)
    print(s.line())
    results["write_shards"] = s.as_dict()
    print(f"build: GeoImageNet shards, manifest.parquet and dataset.json in {cfg.out}")
    return results
