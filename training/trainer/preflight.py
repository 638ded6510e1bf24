"""Checks that need no data loading and no model: run by the CLI before the loader and the model are set
up, and again by the trainer.

Every mistake found here is one GeoSSLError line (exit 2) within a second or two (geo-pretrain imports
the method families, and with them torch, to list their options in --help), instead of after the loader
and the model have been set up. The config's own fields and the data come first, the method's checks
last.
"""

from __future__ import annotations

import json
import os

from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.retry import StorageError, retry_io
from geo_ssl.schemas.dataset_card import check_card, refuse_temporal
from geo_ssl.training.trainer.config import PretrainConfig, checked_method, validate_fields, validate_method
from geo_ssl.training.trainer.run_folder import output_problem


def preflight(cfg: PretrainConfig, world_size: int = 1) -> None:
    """Validate the config, that a local --data exists, that --out can be a run folder, that one batch
    fits in the split and that --n-clusters covers the data's clusters."""
    validate_fields(cfg, world_size)
    check_data_exists(cfg.data)
    check_data_card(cfg.data)
    if fsio.is_local(cfg.out):
        problem = output_problem(cfg.out, folder=True)
        if problem:
            raise GeoSSLError(f"--out {cfg.out}: {problem}")
    else:  # object storage (run_store.py): reachable with these storage options, before any work
        retry_io(lambda: fsio.exists(cfg.out), f"--out {cfg.out}: checking the run folder")
    check_batch_fits(cfg, world_size)
    validate_method(cfg, world_size)  # imports the method families, and torch
    check_n_clusters(cfg)
    check_temporal_positives(cfg)


def check_batch_fits(cfg: PretrainConfig, world_size: int = 1) -> None:
    """Refuse a global batch larger than the split: it would hold the same location twice (a false
    negative for the contrastive loss) and, for a huge batch, grow memory until the run is killed.
    Counts only the shards the loader will read (matching manifest.parquet); --strict refuses the others
    here, before torch is imported."""
    from geo_ssl.training.data.listing_cache import cached_shard_set

    # with --cache-dir, the list kept there when the store is down (README: the cached copy is used)
    chosen = cached_shard_set(cfg.data, cfg.split, cache_dir=cfg.cache_dir or None, strict=cfg.strict)
    locations = sum(int(samples) for samples, _ in chosen.counts)
    if cfg.batch_size > locations:
        per_rank = (
            f" ({cfg.batch_size // world_size} per rank x {world_size} ranks)" if world_size > 1 else ""
        )
        raise GeoSSLError(
            f"--batch-size {cfg.batch_size}{per_rank} is larger than split {cfg.split!r} of {cfg.data} "
            f"({locations} locations): a batch would repeat locations; use --batch-size {locations} or less"
        )


def check_n_clusters(cfg: PretrainConfig) -> None:
    """A --n-clusters below the data's cluster count is refused (the geo loss would fail mid-run on the
    first sample of a higher cluster); above it only wastes outputs, so it is allowed."""
    if not checked_method(cfg).geo or not cfg.n_clusters:
        return
    data_k, where = data_cluster_count(cfg.data)
    if data_k and cfg.n_clusters < data_k:
        raise GeoSSLError(
            f"--n-clusters {cfg.n_clusters} is below the {data_k} geo clusters of the data ({where}); "
            f"drop --n-clusters to use {data_k}"
        )


def check_temporal_positives(cfg: PretrainConfig) -> None:
    """A +tp method on shards whose card says they hold one image per sample or per location (--layout
    views, GeoImageNet) would train on the query's own image as its key: refused here, before torch."""
    if checked_method(cfg).temporal:
        refuse_temporal(cfg.data, cfg.method)


def check_data_exists(data: str) -> None:
    """A local --data that is not there: say so (before any cluster count or card is looked for)."""
    if not data or "{" in data or not fsio.is_local(data):
        return
    if not os.path.exists(fsio.get_fs(data)[1]):
        raise GeoSSLError(f"--data {data}: no shards at {data} (no such file or folder)")


def check_data_card(data: str) -> None:
    """A dataset.json beside the shards that `geo-build-dataset validate` would report (a JSON list, a
    string, broken JSON, fields of the wrong type) is refused on one line: the readers of the card
    (cluster count, temporal positives) expect its fields. No card, or a store that does not answer
    (the shard listing reports that, or uses --cache-dir's copy), is no refusal here."""
    if not isinstance(data, str) or "{" in data or data.endswith(".tar"):
        return  # a shard pattern: no card beside it
    url = fsio.join(data, "dataset.json")
    try:
        text = fsio.read_bytes(url)
    except (OSError, StorageError):
        return
    try:
        card = json.loads(text)
    except ValueError as exc:
        raise GeoSSLError(f"{url}: bad dataset card: not valid JSON ({exc})") from None
    check_card(card, url)


def data_cluster_count(data: str) -> tuple[int, str]:
    """(k, the file that says so) from the build folder's dataset card, or (0, "") when none says."""
    if not isinstance(data, str) or "{" in data or data.endswith(".tar"):
        return 0, ""  # a shard pattern: no card beside it
    for name in ("dataset.json", "index/cluster_stats.json"):
        url = fsio.join(data, name)
        try:
            card = json.loads(fsio.read_bytes(url))
        except Exception:  # missing or unreadable card: fall through to the next source
            continue
        k = _find_k(card) if isinstance(card, dict) else 0
        if k:
            return k, url
    return 0, ""


def _find_k(card: dict) -> int:
    for where in (card, card.get("clusters"), card.get("clustering"), card.get("parameters")):
        if not isinstance(where, dict):
            continue
        for key in ("n_clusters", "k"):
            value = where.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return 0


def resolve_n_clusters(cfg: PretrainConfig) -> int:
    """The geo head's classes: cfg.n_clusters, or the cluster count recorded beside the shards (a build
    folder's dataset card); 0 for a method without the geo head."""
    if not checked_method(cfg).geo:
        return 0
    data_k, _ = data_cluster_count(cfg.data)
    if cfg.n_clusters:
        check_n_clusters(cfg)
        return cfg.n_clusters
    if data_k:
        return data_k
    raise GeoSSLError(
        f"{cfg.data}: no cluster count found in dataset.json or index/cluster_stats.json; pass --n-clusters"
    )
