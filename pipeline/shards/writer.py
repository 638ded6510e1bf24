"""Writes one planned shard in a worker process: views in, one tar plus its completion record out.

Memory stays flat: one view is decoded at a time and every sample is streamed to the tar file as soon
as its views are encoded. Only the standard library, Pillow and fsspec are imported here (webdataset
pulls in torch, pyarrow is not needed), so each worker stays small.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from typing import BinaryIO

from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.errors import RejectError
from geo_ssl.pipeline.shards import imageops
from geo_ssl.pipeline.shards.manifest import read_record, shard_matches, write_record

#: Tar member attributes fixed so that equal inputs give byte-identical shards.
MEMBER_MODE = 0o444
MEMBER_MTIME = 0


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._f.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size


def view_field(i: int) -> str:
    return f"{i:02d}.jpg"


def _padded(size: int) -> int:
    """Bytes a member's data takes in the tar: rounded up to whole 512-byte blocks."""
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = MEMBER_MTIME
    info.mode = MEMBER_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _open(url: str) -> io.BytesIO:
    """The whole view, read with retries: a storage outage raises retry.StorageError and fails the shard
    (a rerun writes it), so a flaky GET never becomes a decode_error reject."""
    return io.BytesIO(fsio.read_bytes(url))


def _encode_views(location: dict, opts: dict) -> tuple[list[tuple[bytes, dict]], list[dict], dict]:
    """([(jpeg, view record)] oldest first, reject rows, {dct scale: views}) for one location."""
    encoded: list[tuple[bytes, dict]] = []
    rejects, scales = [], {}
    for view in location["views"]:
        try:
            with _open(view["image_path"]) as f:
                img = imageops.process_view(
                    f, view["box"], opts["context"], opts["resize"], opts["quality"],
                    upscale=opts["upscale"], dct=opts["dct"],
                )  # fmt: skip
        except RejectError as exc:
            rejects.append(_reject(location, view["image_path"], exc.reason, exc.detail))
            continue
        except OSError as exc:  # the file is missing or unreadable (permissions); outages raise StorageError
            rejects.append(
                _reject(location, view["image_path"], "missing_image", f"{type(exc).__name__}: {exc}")
            )
            continue
        scales[img.scale] = scales.get(img.scale, 0) + 1
        encoded.append((img.jpeg, {
            "field": view_field(len(encoded)), "view_id": view["view_id"], "timestamp": view["timestamp"],
            "gsd": view["gsd"], "cloud_cover": view["cloud_cover"], "box": list(img.box),
            "orig_box": view["box"], "crop": list(img.crop), "orig_size": list(img.orig_size),
            "size": list(img.size),
        }))  # fmt: skip
    return encoded, rejects, scales


def _dumps(meta: dict) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


#: Views layout: what stands for an unknown value, so every sample's json has the same types (schema
#: inference from the first samples, as Hugging Face datasets does it, then holds for all of them).
UNKNOWN = {"country_code": "", "gsd": -1.0, "cloud_cover": -1.0}


def _no_nulls(meta: dict) -> dict:
    return {k: v for k, v in UNKNOWN.items() if meta.get(k) is None}


def view_key(location_key: str, view_index: int) -> str:
    """Sample key of one view in the views layout: `{location_key}-v{NN}` (no dots)."""
    return f"{location_key}-v{view_index:02d}"


def encode_location(
    location: dict, opts: dict, schema_version: str
) -> tuple[list[tuple[str, dict[str, bytes], dict]], list[dict], dict]:
    """([(sample key, members by field, sample-index entry)], reject rows, {dct scale: views}) for one location.

    Layout "locations" (default) gives one sample with every view; "views" one sample per view, each with
    the fixed members jpg, json and cls (schemas/SAMPLE_FORMAT.md). No sample when every view failed.
    """
    encoded, rejects, scales = _encode_views(location, opts)
    if not encoded:
        folder = (
            location["views"][0]["image_path"].rsplit("/", 1)[0] if location["views"] else location["key"]
        )
        rejects.append(_reject(location, folder, "no_views", f"all {len(location['views'])} view(s) failed"))
        return [], rejects, scales
    common = {
        "schema_version": schema_version,
        "location_id": location["location_id"],
        "split": location["split"],
        "category": location["category"],
        "category_index": location["category_index"],
        "lat": location["lat"],
        "lon": location["lon"],
        "cluster": location["cluster"],
        "country_code": location["country_code"],
        "n_views": len(encoded),
    }
    common.update(location.get("extra") or {})  # data-set fields from sample_extras.parquet (GeoImageNet)
    cls = str(location["cluster"]).encode("ascii")
    entry = {k: location[k] for k in ("split", "category", "category_index", "lat", "lon", "cluster")} | {
        "location_key": location["key"],
        "location_views": len(encoded),
    }
    if opts.get("layout", "locations") == "views":
        samples = []
        for i, (jpeg, view) in enumerate(encoded):
            key = view_key(location["key"], i)
            meta = {**common, "key": key, "location_key": location["key"], "view_index": i}
            meta.update({k: v for k, v in view.items() if k != "field"})
            meta.update(_no_nulls(meta))
            stamp = view["timestamp"]
            samples.append((key, {"jpg": jpeg, "json": _dumps(meta), "cls": cls}, {
                **entry, "view_index": i, "views": 1, "first_timestamp": stamp, "last_timestamp": stamp,
            }))  # fmt: skip
        return samples, rejects, scales
    views = [view for _, view in encoded]
    members = {view["field"]: jpeg for jpeg, view in encoded}
    members["json"] = _dumps({**common, "key": location["key"], "views": views})
    members["cls"] = cls
    stamps = {"first_timestamp": views[0]["timestamp"], "last_timestamp": views[-1]["timestamp"]}
    return (
        [(location["key"], members, {**entry, "view_index": None, "views": len(views), **stamps})],
        rejects,
        scales,
    )


def _reject(location: dict, path: str, reason: str, detail: str) -> dict:
    return {
        "stage": "write-shards", "path": path, "reason": reason, "detail": detail,
        "split": location["split"], "location_key": location["key"],
    }  # fmt: skip


def write_shard(task: dict) -> dict:
    """Write (or verify and skip) one shard; returns its completion record with `status` added.

    task: out, shard, split, shard_index, locations (from Plan.shard_locations), options (as_dict),
    fingerprint, inputs (digests of the input tables), schema_version.
    """
    out, name = task["out"], task["shard"]
    old = read_record(out, name)
    if old is not None and old.get("fingerprint") == task["fingerprint"] and shard_matches(out, old):
        return {**old, "status": "skipped"}

    samples = views = written_locations = 0
    first = last = None
    rejects: list[dict] = []
    scales: dict[int, int] = {}
    index: list[dict] = []
    with fsio.atomic_local_path(fsio.join(out, name)) as tmp:
        with open(tmp, "wb") as raw:
            sink = _HashingWriter(raw)
            with tarfile.open(fileobj=sink, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for location in task["locations"]:
                    encoded, bad, used = encode_location(location, task["options"], task["schema_version"])
                    rejects.extend(bad)
                    for s, n in used.items():
                        scales[s] = scales.get(s, 0) + n
                    written_locations += bool(encoded)
                    for key, members, entry in encoded:
                        start, spans = tar.offset, []
                        for field in sorted(members):
                            _add_member(tar, f"{key}.{field}", members[field])
                            size = len(members[field])
                            spans.append([field, tar.offset - _padded(size), size])
                        index.append({**entry, "key": key, "offset": start, "size": tar.offset - start,
                                      "members": spans})  # fmt: skip
                        samples += 1
                        views += entry["views"]
                        first = first or key
                        last = key
            raw.flush()
            os.fsync(raw.fileno())
    record = {
        "shard": name,
        "split": task["split"],
        "shard_index": task["shard_index"],
        "locations": len(task["locations"]),
        "samples": samples,
        "views": views,
        "written_locations": written_locations,
        "bytes": sink.size,
        "sha256": sink.sha256.hexdigest(),
        "first_key": first,
        "last_key": last,
        "rejects": rejects,
        "dct_scales": {str(k): v for k, v in sorted(scales.items())},
        "fingerprint": task["fingerprint"],
        "parameters": task["options"],
        "inputs": task["inputs"],
        "index": index,  # sample-index entries: member offsets inside the tar (sample_index.parquet)
    }
    write_record(out, record)
    return {**record, "status": "written"}
