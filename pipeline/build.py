"""`geo-build-dataset build`: index -> cluster -> write-shards in one resumable run.

Each stage is resumable on its own; build skips a stage whose outputs are complete and were made with
the same parameters, so rerunning the same command after a crash continues where it stopped.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field

from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.checks import check_seed
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.logs import STDOUT, get_logger
from geo_ssl.pipeline.common.outlock import output_lock
from geo_ssl.pipeline.shards.options import ShardOptions

log = get_logger(__name__)
_TOP_KEYS = {"root", "out", "k", "seed", "kind", "index_workers", "shards"}
_KINDS = ("rgb", "msrgb")
#: Type of every [shards] key (ShardOptions checks the ranges): checked before any stage runs.
_SHARD_TYPES: dict[str, tuple[type, ...]] = {
    "resize": (int,), "context": (str, int, float), "quality": (int,), "shard_bytes": (int, str),
    "workers": (int,), "upscale": (bool,), "dct": (bool,), "splits": (list,), "layout": (str,),
}  # fmt: skip
#: The settings a build folder was made with; a rerun into the same --out with others is refused.
BUILD_RECORD = "build.json"


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
    where = path or "flags"
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
    _check_types(data, where)
    shard = dict(shard or {})
    seed_flag = shard.pop("seed", None)
    seed = seed_flag if seed_flag is not None else data.get("seed", 0)
    check_seed(seed, "--seed" if seed_flag is not None else f"{where}: seed")
    file_shards = dict(data.get("shards", {}))
    if isinstance(file_shards.get("splits"), list):
        file_shards["splits"] = tuple(file_shards["splits"])
    shard_cfg = {**file_shards, **shard, "seed": seed}
    try:
        options = ShardOptions(**shard_cfg)
    except TypeError as exc:
        raise GeoSSLError(f"{where}: bad [shards] option ({exc})") from None
    except GeoSSLError as exc:
        raise GeoSSLError(f"{where}: {exc}") from None
    root = root or data.get("root")
    if not root:
        raise GeoSSLError("no fMoW root given: pass --root or set root in the config file")
    k = k if k is not None else data.get("k", 100)
    if k < 1:
        raise GeoSSLError(f"{where}: k must be at least 1, got {k}")
    return BuildConfig(
        root=str(root),
        out=str(out or data.get("out", "shards")),
        k=k,
        seed=seed,
        kind=data.get("kind", "rgb"),
        index_workers=data.get("index_workers"),
        shards=options,
    )


def _type_name(types: tuple[type, ...]) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a table"}  # fmt: skip
    shown = [t for t in types if not (t is int and float in types)]  # "a number" covers integers
    return " or ".join(names.get(t, t.__name__) for t in shown)


def expect_type(where: str, key: str, value: object, types: tuple[type, ...]) -> None:
    """A config value of one of `types`, else GeoSSLError naming WHERE and KEY.

    bool is an int in Python but never a count here; 4.7 is never an integer."""
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        raise GeoSSLError(f"{where}: {key} must be {_type_name(types)}, got {value!r}")


def _check_types(data: dict, where: str) -> None:
    """Every config value's type (and the small ranges ShardOptions does not check), before any stage."""
    for key, types in (("root", (str,)), ("out", (str,)), ("k", (int,)), ("seed", (int,)), ("kind", (str,))):
        if key in data:
            expect_type(where, key, data[key], types)
    if data.get("kind", "rgb") not in _KINDS:
        raise GeoSSLError(f"{where}: kind must be one of {', '.join(_KINDS)}, got {data['kind']!r}")
    if "index_workers" in data:
        expect_type(where, "index_workers", data["index_workers"], (int,))
        if data["index_workers"] < 1:
            raise GeoSSLError(f"{where}: index_workers must be at least 1, got {data['index_workers']}")
    if "k" in data and data["k"] < 1:
        raise GeoSSLError(f"{where}: k must be at least 1, got {data['k']}")
    check_shards_table(data, where)


def check_shards_table(data: dict, where: str) -> None:
    """The [shards] table of a build config: known keys of the right types (ShardOptions checks ranges)."""
    shards = data.get("shards", {})
    if not isinstance(shards, dict):
        raise GeoSSLError(f"{where}: shards must be a table ([shards]), got {shards!r}")
    if unknown := sorted(set(shards) - set(_SHARD_TYPES)):
        raise GeoSSLError(
            f"{where}: unknown [shards] key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_SHARD_TYPES))}"
        )
    for key, value in shards.items():
        expect_type(where, f"shards.{key}", value, _SHARD_TYPES[key])
    splits = shards.get("splits")
    if splits is not None and (not splits or not all(isinstance(s, str) and s.strip() for s in splits)):
        raise GeoSSLError(f"{where}: shards.splits must be a non-empty list of split names, got {splits!r}")


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


def root_url(root: str) -> str:
    """The root as index-fmow records it: an absolute local path, or the URL without a trailing slash."""
    _, path = fsio.get_fs(root)
    return os.path.abspath(path) if fsio.is_local(root) else str(root).rstrip("/")


def settings(config: BuildConfig) -> dict:
    """What shapes the data set, as OUT/build.json records it (worker counts do not)."""
    return {"source": "fmow", "root": root_url(config.root), "kind": config.kind, "k": config.k,
            "seed": config.seed, "shards": shard_settings(config.shards)}  # fmt: skip


def shard_settings(options: ShardOptions) -> dict:
    """The write-shards options that shape the bytes written; the seed is recorded beside k."""
    return {k: v for k, v in options.as_dict().items() if k != "seed"}


def _read_json(url: str) -> object:
    try:
        return json.loads(fsio.read_bytes(url)) if fsio.exists(url) else None
    except ValueError:
        return None


def recorded_settings(out: str) -> dict | None:
    """The settings OUT was built with: build.json (one without a source is an fMoW build's), else (older
    builds) what its index names; None for a new folder. Keys an older record lacks are taken from the
    folder's cluster stats and dataset card, so a rerun with another k or shard option is still caught."""
    from geo_ssl.pipeline.fmow.index import PARTS_DIR, SOURCE_FILE
    from geo_ssl.pipeline.geoimagenet.index import STAGE as IMAGENET_INDEX

    index = fsio.join(out, "index")
    record = None
    for url in (fsio.join(out, BUILD_RECORD), fsio.join(index, "index_summary.json"),
                fsio.join(index, PARTS_DIR, SOURCE_FILE)):  # fmt: skip
        data = _read_json(url)
        if not isinstance(data, dict):
            continue
        if url.endswith(BUILD_RECORD):
            record = {"source": "fmow", **data}
        elif data.get("root"):
            source = "geoimagenet" if data.get("stage") == IMAGENET_INDEX else "fmow"
            record = {"source": source, "root": root_url(str(data["root"]))}
            record.update({"kind": data["kind"]} if data.get("kind") else {})
        if record is not None:
            break
    if record is None or {"k", "seed", "shards"} <= set(record):
        return record
    return {**_settings_found(out), **record}


def _settings_found(out: str) -> dict:
    """k, seed and shard options as OUT's cluster stats and dataset card hold them (for older records)."""
    from geo_ssl.pipeline.shards.manifest import DATASET_CARD

    found: dict = {}
    card = _read_json(fsio.join(out, DATASET_CARD))
    params = card.get("parameters") if isinstance(card, dict) else None
    if isinstance(params, dict):
        found["shards"] = {k: v for k, v in params.items() if k not in ("seed", "workers")}
        found.update({"seed": params["seed"]} if "seed" in params else {})
    stats = _read_json(fsio.join(out, "index", "cluster_stats.json"))
    if isinstance(stats, dict):
        found.update({k: stats[k] for k in ("k", "seed") if k in stats})
    return found


def _show(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def setting_differences(theirs: dict, mine: dict) -> list[str]:
    """'key recorded, not key wanted' for every recorded setting that differs ([shards] keys one by one);
    a setting the record does not hold is not compared."""
    if theirs.get("source") != mine["source"]:
        return [f"source {theirs.get('source')} (root {theirs.get('root')}), not source {mine['source']}"]
    out = []
    for key, value in mine.items():
        old = theirs.get(key)
        if key not in theirs or old == value:
            continue
        if key == "shards" and isinstance(old, dict) and isinstance(value, dict):
            out += [f"shards.{k} {_show(old[k])}, not shards.{k} {_show(v)}" for k, v in value.items()
                    if k in old and old[k] != v]  # fmt: skip
        else:
            out.append(f"{key} {_show(old)}, not {key} {_show(value)}")
    return out


def check_same_settings(out: str, mine: dict, rebuild: bool, kept: str = "") -> None:
    """Refuse, before any stage writes, a build folder made with other settings (its shards would sit
    beside an index of the new ones), or clear it first when `rebuild`; then record `mine` in build.json.
    `kept` tells what --rebuild leaves in place. Shared by the fMoW and GeoImageNet builds."""
    theirs = recorded_settings(out)
    differs = setting_differences(theirs, mine) if theirs is not None else []
    what = " and ".join(differs)
    if differs and not rebuild:
        raise GeoSSLError(
            f"{out} holds a build of {what}; use another --out, or pass --rebuild to replace that build"
        )
    if differs:
        removed = clear_build(out)
        log.info(
            f"build: --rebuild: removed the build of {what} from {out} ({removed} entries){kept}",
            extra=STDOUT,
        )
    fsio.atomic_write_text(fsio.join(out, BUILD_RECORD), json.dumps(mine, sort_keys=True) + "\n")


def clear_build(out: str) -> int:
    """Remove the outputs a build writes (and nothing else) from OUT; return how many entries went."""
    from geo_ssl.pipeline.shards.manifest import DATASET_CARD, DONE_DIR, MANIFEST, REJECTS

    fs, path = fsio.get_fs(out)
    names = {
        "index",
        DONE_DIR,
        MANIFEST,
        REJECTS,
        DATASET_CARD,
        "sample_index.parquet",
        "report",
        BUILD_RECORD,
    }
    removed = 0
    for entry in fs.ls(path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name in names or (name.endswith(".tar") and fs.isfile(entry)):
            fs.rm(entry, recursive=True)
            removed += 1
    return removed


def build(config: BuildConfig, rebuild: bool = False) -> dict:
    """Index, cluster and write shards into OUT (locked for the run); resumes a build of the same settings.

    A build folder holding a build of other settings (root, kind, k, seed, shard options) is refused
    (GeoSSLError) before any stage writes, or replaced when `rebuild`."""
    fsio.check_output_dir(config.out, "--out")
    with output_lock(config.out, "build"):
        check_same_settings(config.out, settings(config), rebuild)
        return _build(config)


def _build(config: BuildConfig) -> dict:
    """Run stages 4 to 6 and return their summaries; logs one reconciling line per stage (to stdout)."""
    from geo_ssl.pipeline.cluster import cluster
    from geo_ssl.pipeline.fmow.index import index_fmow
    from geo_ssl.pipeline.shards.write import write_shards

    results: dict = {}
    if _index_complete(config.index_dir):
        summary = json.loads(fsio.read_bytes(fsio.join(config.index_dir, "index_summary.json")))
        log.info(
            f"index-fmow: complete in {config.index_dir}, skipped ({summary.get('written', '?')} images)",
            extra=STDOUT,
        )
        results["index"] = summary
    else:
        s = index_fmow(config.root, config.index_dir, workers=config.index_workers, kind=config.kind)
        log.info(s.line(), extra=STDOUT)
        results["index"] = s.as_dict()

    if _clusters_complete(config.index_dir, config.k, config.seed):
        log.info(
            f"cluster: complete in {config.index_dir} (k={config.k}, seed={config.seed}), skipped",
            extra=STDOUT,
        )
        results["cluster"] = json.loads(fsio.read_bytes(fsio.join(config.index_dir, "cluster_stats.json")))
    else:
        stats = cluster(config.index_dir, k=config.k, seed=config.seed)
        log.info(stats["line"], extra=STDOUT)
        results["cluster"] = stats

    s = write_shards(config.index_dir, config.out, options=config.shards)
    log.info(s.line(), extra=STDOUT)
    results["write_shards"] = s.as_dict()
    log.info(f"build: shards, manifest.parquet and dataset.json in {config.out}", extra=STDOUT)
    return results
