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


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = MEMBER_MTIME
    info.mode = MEMBER_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _open(url: str):
    fs, path = fsio.get_fs(url)
    return fs.open(path, "rb")


def encode_location(location: dict, opts: dict, schema_version: str) -> tuple[dict | None, list[dict], dict]:
    """(members by field or None, reject rows, {dct scale: views}) for one location."""
    members: dict[str, bytes] = {}
    views, rejects, scales = [], [], {}
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
        except OSError as exc:  # opening the file failed (permissions, network)
            rejects.append(
                _reject(location, view["image_path"], "missing_image", f"{type(exc).__name__}: {exc}")
            )
            continue
        field = view_field(len(views))
        members[field] = img.jpeg
        scales[img.scale] = scales.get(img.scale, 0) + 1
        views.append({
            "field": field, "view_id": view["view_id"], "timestamp": view["timestamp"], "gsd": view["gsd"],
            "cloud_cover": view["cloud_cover"], "box": list(img.box), "orig_box": view["box"],
            "crop": list(img.crop), "orig_size": list(img.orig_size), "size": list(img.size),
        })  # fmt: skip
    if not views:
        folder = (
            location["views"][0]["image_path"].rsplit("/", 1)[0] if location["views"] else location["key"]
        )
        rejects.append(_reject(location, folder, "no_views", f"all {len(location['views'])} view(s) failed"))
        return None, rejects, scales
    meta = {
        "schema_version": schema_version,
        "key": location["key"],
        "location_id": location["location_id"],
        "split": location["split"],
        "category": location["category"],
        "category_index": location["category_index"],
        "lat": location["lat"],
        "lon": location["lon"],
        "cluster": location["cluster"],
        "country_code": location["country_code"],
        "n_views": len(views),
        "views": views,
    }
    members["json"] = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    members["cls"] = str(location["cluster"]).encode("ascii")
    return members, rejects, scales


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

    samples = views = 0
    first = last = None
    rejects: list[dict] = []
    scales: dict[int, int] = {}
    with fsio.atomic_local_path(fsio.join(out, name)) as tmp:
        with open(tmp, "wb") as raw:
            sink = _HashingWriter(raw)
            with tarfile.open(fileobj=sink, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for location in task["locations"]:
                    members, bad, used = encode_location(location, task["options"], task["schema_version"])
                    rejects.extend(bad)
                    for s, n in used.items():
                        scales[s] = scales.get(s, 0) + n
                    if members is None:
                        continue
                    for field in sorted(members):
                        _add_member(tar, f"{location['key']}.{field}", members[field])
                    samples += 1
                    views += len(members) - 2
                    first = first or location["key"]
                    last = location["key"]
            raw.flush()
            os.fsync(raw.fileno())
    record = {
        "shard": name,
        "split": task["split"],
        "shard_index": task["shard_index"],
        "locations": len(task["locations"]),
        "samples": samples,
        "views": views,
        "bytes": sink.size,
        "sha256": sink.sha256.hexdigest(),
        "first_key": first,
        "last_key": last,
        "rejects": rejects,
        "dct_scales": {str(k): v for k, v in sorted(scales.items())},
        "fingerprint": task["fingerprint"],
        "parameters": task["options"],
        "inputs": task["inputs"],
    }
    write_record(out, record)
    return {**record, "status": "written"}
