"""`geo-build-dataset build`: index -> cluster -> write-shards in one resumable run.

Each stage is resumable on its own; build skips a stage whose outputs are complete and were made with
the same parameters, so rerunning the same command after a crash continues where it stopped.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field

from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.shards.options import ShardOptions

_TOP_KEYS = {"root", "out", "k", "seed", "kind", "index_workers", "shards"}


@dataclass
class BuildConfig:
    """Everything a build needs; from a TOML file, flags, or both (flags win)."""

    root: str
    out: str = "shards"
    k: int = 100
    seed: int = 0
    kind: str = "rgb"
    index_workers: int | None = None
    shards: ShardOptions = field(default_factory=ShardOptions)

    @property
    def index_dir(self) -> str:
        return fsio.join(self.out, "index")


def load_build_config(
    path: str | None,
    root: str | None = None,
    out: str | None = None,
    k: int | None = None,
    shard: dict | None = None,
) -> BuildConfig:
    """Merge a TOML config (optional) with flag overrides and validate; errors name the file and key."""
    data: dict = {}
    if path is not None:
        try:
            data = tomllib.loads(fsio.read_bytes(path).decode("utf-8"))
        except FileNotFoundError:
            raise GeoSSLError(f"{path}: config file not found") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise GeoSSLError(f"{path}: not valid TOML ({exc})") from None
        if unknown := sorted(set(data) - _TOP_KEYS):
            raise GeoSSLError(
                f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_TOP_KEYS))}"
            )
    shard = dict(shard or {})
    seed = int(shard.pop("seed", None) if shard.get("seed") is not None else data.get("seed", 0))
    shard_cfg = {**data.get("shards", {}), **shard, "seed": seed}
    try:
        options = ShardOptions(**shard_cfg)
    except TypeError as exc:
        raise GeoSSLError(f"{path or 'flags'}: bad [shards] option ({exc})") from None
    root = root or data.get("root")
    if not root:
        raise GeoSSLError("no fMoW root given: pass --root or set root in the config file")
    return BuildConfig(
        root=str(root),
        out=str(out or data.get("out", "shards")),
        k=int(k if k is not None else data.get("k", 100)),
        seed=seed,
        kind=str(data.get("kind", "rgb")),
        index_workers=data.get("index_workers"),
        shards=options,
    )


def _index_complete(index_dir: str) -> bool:
    return all(
        fsio.exists(fsio.join(index_dir, n))
        for n in ("images.parquet", "locations.parquet", "index_summary.json")
    )


def _clusters_complete(index_dir: str, k: int, seed: int) -> bool:
    stats_url = fsio.join(index_dir, "cluster_stats.json")
    if not (fsio.exists(stats_url) and fsio.exists(fsio.join(index_dir, "clusters.parquet"))):
        return False
    stats = json.loads(fsio.read_bytes(stats_url))
    return stats.get("k") == k and stats.get("seed") == seed


def build(config: BuildConfig) -> dict:
    """Run stages 4 to 6 and return their summaries; prints one reconciling line per stage."""
    from geo_ssl.pipeline.cluster import cluster
    from geo_ssl.pipeline.fmow.index import index_fmow
    from geo_ssl.pipeline.shards.write import write_shards

    results: dict = {}
    if _index_complete(config.index_dir):
        summary = json.loads(fsio.read_bytes(fsio.join(config.index_dir, "index_summary.json")))
        print(f"index-fmow: complete in {config.index_dir}, skipped ({summary.get('written', '?')} images)")
        results["index"] = summary
    else:
        s = index_fmow(config.root, config.index_dir, workers=config.index_workers, kind=config.kind)
        print(s.line())
        results["index"] = s.as_dict()

    if _clusters_complete(config.index_dir, config.k, config.seed):
        print(f"cluster: complete in {config.index_dir} (k={config.k}, seed={config.seed}), skipped")
        results["cluster"] = json.loads(fsio.read_bytes(fsio.join(config.index_dir, "cluster_stats.json")))
    else:
        stats = cluster(config.index_dir, k=config.k, seed=config.seed)
        print(stats["line"])
        results["cluster"] = stats

    s = write_shards(config.index_dir, config.out, options=config.shards)
    print(s.line())
    results["write_shards"] = s.as_dict()
    print(f"build: shards, manifest.parquet and dataset.json in {config.out}")
    return results
