"""`geo-build-dataset write-shards`: plan, write shards in a process pool, then manifest, rejects, card.

Resumable after kill -9: a shard whose completion record exists and whose tar still matches it is
skipped; everything else is rewritten from the same plan, so a resumed build is byte-identical to an
uninterrupted one. The manifest, rejects table and dataset card are rebuilt from all records at the end.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections import Counter
from collections.abc import Iterator

from geo_ssl.pipeline.common import executor, fsio
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.outlock import output_lock
from geo_ssl.pipeline.common.progress import Summary, progress
from geo_ssl.pipeline.common.retry import StorageError
from geo_ssl.pipeline.common.tables import read_table, write_table
from geo_ssl.pipeline.shards import card, sample_extras
from geo_ssl.pipeline.shards.hub_card import HUB_CARD, hub_card, max_views
from geo_ssl.pipeline.shards.manifest import (
    DATASET_CARD,
    DONE_DIR,
    MANIFEST,
    REJECTS,
    dumps,
    file_digest,
    manifest_table,
    read_records,
    rejects_table,
)  # fmt: skip
from geo_ssl.pipeline.shards.options import ShardOptions
from geo_ssl.pipeline.shards.plan import VIEW_COLUMNS, Plan, fingerprint, make_plan
from geo_ssl.pipeline.shards.sample_index import SAMPLE_INDEX, write_sample_index
from geo_ssl.pipeline.shards.shard_task import write_shard_or_fail
from geo_ssl.schemas import SCHEMA_VERSION

STAGE = "write-shards"
_SHOWN_FAILED = 5  # failed shards named on the error line
SIZE_NOTE = (
    "Shards are packed by an estimate of each location's encoded size made before encoding (so they can be "
    "written in parallel and deterministically); real sizes differ from shard_bytes and are in manifest.parquet."
)


def write_shards(
    index: str, out: str, clusters: str | None = None, options: ShardOptions | None = None
) -> Summary:
    """Write one WebDataset sample per clustered location of INDEX into OUT (see schemas/SAMPLE_FORMAT.md).

    OUT is locked for the run (common/outlock.py): a second run into it stops with exit 2."""
    fsio.check_output_dir(out, "--out")
    with output_lock(out, STAGE):
        return _write_shards(index, out, clusters, options)


def _write_shards(index: str, out: str, clusters: str | None, options: ShardOptions | None) -> Summary:
    options = options or ShardOptions()
    clusters_dir = clusters or index
    images_url = fsio.join(index, "images.parquet")
    clusters_url = fsio.join(clusters_dir, "clusters.parquet")
    images = read_table(images_url, "image_index", columns=VIEW_COLUMNS)
    cluster_table = read_table(clusters_url, "clusters", columns=["location_key", "cluster", "lat", "lon"])
    inputs = {"images_sha256": file_digest(images_url)[1], "clusters_sha256": file_digest(clusters_url)[1]}
    if extras_at := sample_extras.extras_url(index):  # GeoImageNet: wnid, class name, Flickr id per sample
        inputs["extras_sha256"] = file_digest(extras_at)[1]
    fp = fingerprint(inputs, options)
    plan = make_plan(images, cluster_table, options)
    plan.extras = sample_extras.read_extras(index)
    geo_clusters = card.geo_clusters(clusters_dir, cluster_table)  # k and centroids, for the card
    del images, cluster_table

    _refuse_other_build(out, fp, options, inputs)
    fsio.makedirs(fsio.join(out, DONE_DIR))
    fsio.remove_stale_temps(out)
    fsio.remove_stale_temps(fsio.join(out, DONE_DIR))

    records: dict[str, dict] = {}
    failed: list[dict] = []

    def ticks() -> Iterator[None]:
        for rec in _run(plan, out, options, fp, inputs):
            if rec["status"] == "failed":
                failed.append(rec)
            else:
                records[rec["shard"]] = rec
            yield from (None for _ in range(rec["locations"]))

    total = sum(len(s.locations) for s in plan.shards)
    for _ in progress(ticks(), total=total, desc=STAGE, unit="loc"):
        pass
    fsio.remove_stale_temps(out)  # a temp tar of a worker lost mid-task (Dask reran the task elsewhere)
    if failed:
        _fail_shards(failed, len(plan.shards))

    ordered = [records[s.name] for s in plan.shards]
    write_table(manifest_table(ordered), fsio.join(out, MANIFEST), "shard_manifest")
    all_rejects = plan.rejects + [r for rec in ordered for r in rec["rejects"]]
    write_table(rejects_table(all_rejects), fsio.join(out, REJECTS), "rejects")
    write_sample_index(ordered, fsio.join(out, SAMPLE_INDEX))
    dataset_card = _card(index, clusters_dir, options, fp, inputs, plan, ordered)
    dataset_card.update(card.describe(out, index, clusters_dir, geo_clusters, plan.views, inputs))
    dataset_card.update(sample_extras.card_fields(getattr(plan, "extras", None)))
    fsio.atomic_write_text(fsio.join(out, DATASET_CARD), dumps(dataset_card))
    fsio.atomic_write_text(fsio.join(out, HUB_CARD), hub_card(dataset_card, max_views(ordered)))
    return _summary(plan, ordered, out)


def _fail_shards(failed: list[dict], total: int) -> None:
    """Storage kept failing for some shards: name them; they have no record, so the rerun writes them."""
    failed = sorted(failed, key=lambda r: r["shard"])
    names = ", ".join(r["shard"] for r in failed[:_SHOWN_FAILED])
    more = f" and {len(failed) - _SHOWN_FAILED} more" if len(failed) > _SHOWN_FAILED else ""
    raise StorageError(
        f"{STAGE}: {len(failed)} of {total} shard(s) not written because storage kept failing ({names}{more};"
        f" first: {failed[0]['error']}); the others are done; rerun the same command to finish",
        max(r["exit_code"] for r in failed),
    )


def _refuse_other_build(out: str, fp: str, options: ShardOptions, inputs: dict) -> None:
    """Resuming into a folder written from other inputs or options would mix two data sets."""
    other = next((r for r in read_records(out).values() if r.get("fingerprint") != fp), None)
    card_fp = None
    if fsio.exists(fsio.join(out, DATASET_CARD)):
        try:
            card_fp = json.loads(fsio.read_bytes(fsio.join(out, DATASET_CARD))).get("fingerprint")
        except ValueError:
            card_fp = "unreadable"
    if other is None and card_fp in (None, fp):
        return
    mine = options.as_dict()
    theirs = (other or {}).get("parameters") or {}
    changed = [
        f"{k}: {theirs[k]!r} -> {mine[k]!r}" for k in sorted(mine) if k in theirs and theirs[k] != mine[k]
    ]
    if changed:
        why = f"options differ: {', '.join(changed)}"
    elif other is not None and other.get("inputs") != inputs:
        why = "the image index or clusters.parquet changed"
    else:
        why = "another index, other clusters or other options"
    raise GeoSSLError(f"{out} holds shards of another build ({why}); use a new --out or delete {out}")


def _tasks(plan: Plan, out: str, options: ShardOptions, fp: str, inputs: dict) -> Iterator[dict]:
    opts = options.as_dict()
    for shard in plan.shards:
        yield {
            "out": out, "shard": shard.name, "split": shard.split, "shard_index": shard.index,
            "locations": sample_extras.attach(plan.shard_locations(shard), getattr(plan, "extras", None)),
            "options": opts, "fingerprint": fp,
            "inputs": inputs, "schema_version": SCHEMA_VERSION,
        }  # fmt: skip


def _run(plan: Plan, out: str, options: ShardOptions, fp: str, inputs: dict) -> Iterator[dict]:
    """Completion records as shards finish, from the executor (a spawn pool by default, or Dask).

    Tasks are submitted a few at a time so the main process never materialises the whole plan.
    """
    tasks = _tasks(plan, out, options, fp, inputs)
    workers = min(int(options.workers), len(plan.shards))
    try:
        yield from executor.run_tasks(write_shard_or_fail, tasks, workers, stage=STAGE)
    except OSError as exc:
        raise GeoSSLError(
            f"writing shards to {out} failed ({exc}); rerun the same command to resume"
        ) from exc


def _versions() -> dict[str, str | None]:
    out = {}
    for name in ("geo-ssl", "pillow", "webdataset", "pyarrow", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    if out["geo-ssl"] is None:
        import pipeline

        out["geo-ssl"] = pipeline.__version__
    return out


def _card(
    index: str, clusters: str, options: ShardOptions, fp: str, inputs: dict, plan: Plan, records: list[dict]
) -> dict:
    """The dataset card: how the shards were made and what they hold; no timestamps, so reruns match."""
    splits: dict[str, dict] = {}
    for rec in records:
        s = splits.setdefault(rec["split"], Counter())
        s.update(shards=1, samples=rec["samples"], views=rec["views"], bytes=rec["bytes"])
        s.update(rejected_locations=sum(1 for r in rec["rejects"] if r["reason"] == "no_views"))
    for r in plan.rejects:
        splits.setdefault(r["split"], Counter()).update(rejected_locations=1)
    counts = {}
    for name, c in sorted(splits.items()):
        keys = ("shards", "samples", "views", "bytes", "rejected_locations")
        counts[name] = {k: int(c.get(k, 0)) for k in keys}
        if c.get("shards"):
            counts[name]["pattern"] = f"{name}-{{000000..{c['shards'] - 1:06d}}}.tar"
    return {
        "name": "geo-ssl fMoW temporal WebDataset",
        "schema_version": SCHEMA_VERSION,
        "sample_format": "schemas/SAMPLE_FORMAT.md",
        "layout": options.layout,  # "locations": one sample per location; "views": one sample per view
        "sample_index": SAMPLE_INDEX,  # per sample: shard, member byte offsets, lat, lon, category, cluster
        "fingerprint": fp,
        "seed": options.seed,
        "parameters": options.as_dict(),
        "inputs": {"index": index, "clusters": clusters, **inputs},
        "splits": counts,
        "versions": _versions(),
        "size_note": SIZE_NOTE,
    }


def _summary(plan: Plan, records: list[dict], out: str) -> Summary:
    summary = Summary(stage=STAGE, unit="locations", inputs=plan.n_locations)
    summary.rejected = len(plan.rejects)
    summary.reasons.update(r["reason"] for r in plan.rejects)
    scales: Counter = Counter()
    views = written_bytes = 0
    for rec in records:
        if rec["status"] == "skipped":
            summary.skipped += rec["locations"]
            continue
        summary.written += rec.get("written_locations", rec["samples"])  # views layout: samples are views
        summary.rejected += sum(1 for r in rec["rejects"] if r["reason"] == "no_views")
        summary.reasons.update(r["reason"] for r in rec["rejects"])
        scales.update({int(k): v for k, v in rec["dct_scales"].items()})
        views += rec["views"]
        written_bytes += rec["bytes"]
    summary.extra = {
        "out": out,
        "shards_written": sum(1 for r in records if r["status"] == "written"),
        "shards_skipped": sum(1 for r in records if r["status"] == "skipped"),
        "views_written": views,
        "bytes_written": written_bytes,
        "dct_scales": {str(k): v for k, v in sorted(scales.items())},
    }
    return summary
