"""`geo-build-dataset build --source geoimagenet`: harvest -> index -> cluster -> write-shards in one run.

Every stage is resumable on its own (the harvest never asks an answered photo again, cluster and
write-shards skip finished work), so rerunning the same command after a crash continues where it stopped.
The settings that shape the data set are recorded in OUT/build.json before any stage writes; a rerun with
other settings is refused up front, or with --rebuild the old build is removed first (the harvest,
Flickr's answers, is kept: it does not depend on the settings).
Config: the same TOML as the fMoW build, with `source = "geoimagenet"` and the keys below.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field

from geo_ssl.pipeline.build import (
    check_same_settings,
    check_shards_table,
    expect_type,
    root_url,
    shard_settings,
)
from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.checks import check_seed
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.logs import STDOUT, get_logger
from geo_ssl.pipeline.common.outlock import output_lock
from geo_ssl.pipeline.geoimagenet.harvest import HarvestOptions
from geo_ssl.pipeline.shards.options import ShardOptions

log = get_logger(__name__)
#: Type of every top-level config key ([shards] as in the fMoW build); ranges are checked after merging.
_TYPES: dict[str, tuple[type, ...]] = {
    "source": (str,), "root": (str,), "out": (str,), "k": (int,), "seed": (int,), "urls": (str,),
    "yfcc": (str,), "words": (str,), "credentials": (str,), "api_url": (str,), "rate_limit": (int, float),
    "concurrency": (int,), "val_fraction": (int, float), "shards": (dict,),
}  # fmt: skip
KEYS = set(_TYPES)


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
    """Merge the TOML config with flags (flags win) and check every value before any stage runs;
    errors name the file (or "flags") and key."""
    from geo_ssl.pipeline.geoimagenet.index import check_val_fraction

    data = read_config(path)
    where = path or "flags"
    if unknown := sorted(set(data) - KEYS):
        raise GeoSSLError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(KEYS))}")
    for key, value in data.items():
        expect_type(where, key, value, _TYPES[key])
    check_shards_table(data, where)
    merged = {**data, **{k: v for k, v in flags.items() if v is not None}}
    for need in ("root", "urls"):
        if not merged.get(need):
            raise GeoSSLError(
                f"GeoImageNet build: no {need} given: pass --{need} or set {need} in the config file"
            )
    shard = dict(shard or {})
    seed_flag = shard.pop("seed", None)
    seed = seed_flag if seed_flag is not None else data.get("seed", 0)
    check_seed(seed, "--seed" if seed_flag is not None else f"{where}: seed")
    k = merged.get("k", 100)
    if k < 1:
        raise GeoSSLError(f"{where}: k must be at least 1, got {k}")
    val_fraction = check_val_fraction(float(merged.get("val_fraction", 0.2)), f"{where}: val_fraction")
    try:
        options = ShardOptions(**{**data.get("shards", {}), **shard, "seed": seed})
        hv = HarvestOptions()
        for name in ("api_url", "rate_limit", "concurrency"):
            if merged.get(name) is not None:
                setattr(hv, name, type(getattr(hv, name))(merged[name]))
        hv.check()
    except TypeError as exc:
        raise GeoSSLError(f"{where}: bad [shards] option ({exc})") from None
    except GeoSSLError as exc:
        raise GeoSSLError(f"{where}: {exc}") from None
    return GeoImageNetBuild(
        root=str(merged["root"]), urls=str(merged["urls"]), out=str(merged.get("out", "shards")), k=k,
        seed=seed, yfcc=merged.get("yfcc"), words=merged.get("words"), credentials=merged.get("credentials"),
        val_fraction=val_fraction, harvest=hv, shards=options,
    )  # fmt: skip


def settings(cfg: GeoImageNetBuild) -> dict:
    """What shapes the data set, as OUT/build.json records it (the harvest options and the YFCC dump only
    change how coordinates are fetched, so they are left out: the harvest folder is reused as it is)."""
    return {
        "source": "geoimagenet", "root": root_url(cfg.root), "urls": root_url(cfg.urls),
        "words": root_url(cfg.words) if cfg.words else None, "val_fraction": cfg.val_fraction,
        "seed": cfg.seed, "k": cfg.k,
        "shards": shard_settings(cfg.shards),
    }  # fmt: skip


def build_geoimagenet(cfg: GeoImageNetBuild, rebuild: bool = False) -> dict:
    """Run the chain into OUT (locked for the run); prints one reconciling line per stage and returns
    their summaries. OUT holding a build with other settings is refused, or replaced when `rebuild`."""
    fsio.check_output_dir(cfg.out, "--out")
    with output_lock(cfg.out, "build"):
        check_same_settings(cfg.out, settings(cfg), rebuild, kept="; the harvest (Flickr's answers) is kept")
        return _build(cfg)


def _build(cfg: GeoImageNetBuild) -> dict:
    from geo_ssl.pipeline.cluster import cluster
    from geo_ssl.pipeline.geoimagenet.harvest import harvest_flickr, status_line
    from geo_ssl.pipeline.geoimagenet.index import index_imagenet
    from geo_ssl.pipeline.shards.write import write_shards

    harvest_dir = fsio.join(cfg.out, "harvest")
    index_dir = fsio.join(cfg.out, "index")
    results: dict = {}
    s = harvest_flickr(cfg.urls, harvest_dir, cfg.harvest, credentials=cfg.credentials, yfcc=cfg.yfcc)
    log.info(s.line(), extra=STDOUT)
    log.info(status_line(s), extra=STDOUT)
    results["harvest"] = s.as_dict()
    s = index_imagenet(
        cfg.root, harvest_dir, index_dir, val_fraction=cfg.val_fraction, seed=cfg.seed, words=cfg.words
    )
    log.info(s.line(), extra=STDOUT)
    results["index"] = s.as_dict()
    stats_url = fsio.join(index_dir, "cluster_stats.json")
    stats = json.loads(fsio.read_bytes(stats_url)) if fsio.exists(stats_url) else {}
    if stats.get("k") == cfg.k and stats.get("seed") == cfg.seed and stats.get("inputs") == s.written:
        log.info(f"cluster: complete in {index_dir} (k={cfg.k}, seed={cfg.seed}), skipped", extra=STDOUT)
    else:
        stats = cluster(index_dir, k=cfg.k, seed=cfg.seed)
        log.info(stats["line"], extra=STDOUT)
    results["cluster"] = stats
    s = write_shards(index_dir, cfg.out, options=cfg.shards)
    log.info(s.line(), extra=STDOUT)
    results["write_shards"] = s.as_dict()
    log.info(f"build: GeoImageNet shards, manifest.parquet and dataset.json in {cfg.out}", extra=STDOUT)
    return results
