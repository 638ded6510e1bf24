"""`geo-build-dataset validate OUT`: re-read every shard of a build and report what does not hold.

Each listed shard is read once, start to end: its size and sha256 are compared with the manifest, every
JPEG is decoded, every json is checked against the sample format, and counts and first/last keys are
compared with the manifest. Keys must be unique across shards, and tar files on disk that the
manifest does not list are reported too.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import posixpath
import tarfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from PIL import Image

from geo_ssl.pipeline.common import fsio, procs
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.progress import progress
from geo_ssl.pipeline.common.tables import read_table
from geo_ssl.pipeline.shards.manifest import MANIFEST
from geo_ssl.pipeline.shards.sample_format import check_sample, check_view_sample
from geo_ssl.pipeline.shards.sample_index import SAMPLE_INDEX
from geo_ssl.schemas.dataset_card import DATASET_CARD, LAYOUTS, card_problems, category_names

_SHOWN = 5  # problems printed on the summary line


@dataclass
class ShardCheck:
    shard: str
    problems: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    samples: int = 0
    views: int = 0
    bytes: int = 0
    spans: dict[str, list] = field(default_factory=dict)  # key -> [(member, data offset, size)]
    named: dict[int, dict[str, str]] = field(default_factory=dict)  # category_index -> name -> first key


@dataclass
class ValidationReport:
    out: str
    shards: int = 0
    samples: int = 0
    views: int = 0
    bytes: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (shard or file, what is wrong)

    @property
    def ok(self) -> bool:
        return not self.problems

    def by_shard(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for where, what in self.problems:
            out.setdefault(where, []).append(what)
        return out

    def line(self) -> str:
        text = f"validate {self.out}: {self.shards} shards, {self.samples} samples, {self.views} views, {self.bytes} bytes"
        if self.ok:
            return text + " [ok]"
        shown = "; ".join(f"{where}: {what}" for where, what in self.problems[:_SHOWN])
        more = f" (and {len(self.problems) - _SHOWN} more)" if len(self.problems) > _SHOWN else ""
        return f"{text} [{len(self.problems)} problem(s)] {shown}{more}"

    def as_dict(self) -> dict:
        return {
            "out": self.out, "ok": self.ok, "shards": self.shards, "samples": self.samples,
            "views": self.views, "bytes": self.bytes, "problems": self.by_shard(),
        }  # fmt: skip


class _HashingReader:
    """Read-through file object that hashes and counts what is read."""

    def __init__(self, f) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _split_name(name: str) -> tuple[str, str]:
    base = posixpath.basename(name)
    key, _, ext = base.partition(".")
    return posixpath.join(posixpath.dirname(name), key), ext


def _check_sample(
    key: str,
    members: dict[str, bytes],
    layout: str = "locations",
    expect: dict | None = None,
    named: dict[int, dict[str, str]] | None = None,
) -> tuple[list[str], int]:
    """Problems of one sample and its number of views; `expect` holds the card's k and categories.
    `named` collects each category_index's names (with a key holding it) for checks across samples."""
    problems, sizes = [], {}
    for name, data in members.items():
        if name.endswith(".jpg") or name == "jpg":
            try:
                with Image.open(io.BytesIO(data)) as im:
                    im.load()
                    if im.format != "JPEG":  # decodes, but readers expecting JPEG bytes would not
                        problems.append(f"{key}.{name} holds {im.format} bytes, not JPEG")
                    sizes[name] = list(im.size)
            except Exception as exc:  # any decoder failure is a finding, not a crash
                problems.append(f"{key}.{name} does not decode ({type(exc).__name__}: {exc})")
    if "json" not in members:
        return [*problems, f"{key} has no json member"], len(sizes)
    try:
        meta = json.loads(members["json"])
    except ValueError as exc:
        return [*problems, f"{key}.json is not valid JSON ({exc})"], len(sizes)
    problems += _label_problems(key, meta, expect or {})
    if named is not None and isinstance(meta, dict):
        index, name = meta.get("category_index"), meta.get("category")
        if isinstance(index, int) and not isinstance(index, bool) and isinstance(name, str):
            named.setdefault(index, {}).setdefault(name, key)
    if layout == "views":  # one view per sample: members jpg, json, cls
        problems += [f"{key}: {p}" for p in check_view_sample(meta, members.keys(), members.get("cls"))]
        if isinstance(meta, dict) and "jpg" in sizes and meta.get("size") != sizes["jpg"]:
            problems.append(f"{key}.jpg is {sizes['jpg']} px but json says {meta.get('size')}")
        meta = {"key": meta.get("key")} if isinstance(meta, dict) else meta
    else:
        problems += [f"{key}: {p}" for p in check_sample(meta, members.keys(), members.get("cls"))]
    if isinstance(meta, dict) and meta.get("key") != key:
        problems.append(f"{key}: json key {meta.get('key')!r} differs from the member key")
    for view in meta.get("views", []) if isinstance(meta, dict) else []:
        name = view.get("field") if isinstance(view, dict) else None
        if name in sizes and view.get("size") != sizes[name]:
            problems.append(f"{key}.{name} is {sizes[name]} px but json says {view.get('size')}")
    return problems, len(sizes)


def check_shard(out: str, row: dict, layout: str = "locations", expect: dict | None = None) -> ShardCheck:
    """Read one shard fully and compare it with its manifest row."""
    name = row["shard"]
    check = ShardCheck(name)
    fs, path = fsio.get_fs(fsio.join(out, name))
    if not fs.exists(path):
        check.problems.append("listed in the manifest but missing")
        return check
    seen: set[str] = set()
    current, members = None, {}

    def finish() -> None:
        if current is None:
            return
        problems, n_views = _check_sample(current, members, layout, expect, check.named)
        check.problems.extend(problems)
        check.keys.append(current)
        check.samples += 1
        check.views += n_views

    with fs.open(path, "rb") as f:
        reader = _HashingReader(f)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for info in tar:
                    if not info.isfile():
                        check.problems.append(f"member {info.name} is not a regular file")
                        continue
                    key, ext = _split_name(info.name)
                    if key != current:
                        finish()
                        if key in seen:
                            check.problems.append(f"{key}: members are not contiguous or the key repeats")
                        seen.add(key)
                        current, members = key, {}
                    if ext in members:
                        check.problems.append(f"{key}: duplicate member {ext}")
                    members[ext] = tar.extractfile(info).read()
                    check.spans.setdefault(key, []).append((ext, info.offset_data, info.size))
                finish()
        except (tarfile.TarError, OSError, EOFError) as exc:
            check.problems.append(f"not a readable tar ({type(exc).__name__}: {exc})")
        reader.drain()
    check.bytes = reader.size
    if reader.size != row["bytes"]:
        check.problems.append(f"size {reader.size} differs from the manifest's {row['bytes']}")
    if reader.sha256.hexdigest() != row["sha256"]:
        check.problems.append("sha256 differs from the manifest")
    for what, have in (("samples", check.samples), ("views", check.views)):
        if have != row[what]:
            check.problems.append(f"{have} {what}, manifest says {row[what]}")
    first, last = (check.keys[0], check.keys[-1]) if check.keys else (None, None)
    if (first, last) != (row["first_key"], row["last_key"]):
        check.problems.append(
            f"first/last key {first}/{last}, manifest says {row['first_key']}/{row['last_key']}"
        )
    return check


def _check_all(
    out: str, rows: list[dict], workers: int, layout: str = "locations", expect: dict | None = None
) -> Iterator[ShardCheck]:
    if workers <= 1 or len(rows) <= 1:
        yield from (check_shard(out, r, layout, expect) for r in rows)
        return
    ctx = multiprocessing.get_context("spawn")
    n = len(rows)
    # workers end with this run (procs.exit_with_run): a killed validate leaves no process behind
    tie = {"initializer": procs.exit_with_run, "initargs": (os.getpid(),)}
    with ProcessPoolExecutor(max_workers=min(workers, n), mp_context=ctx, **tie) as pool:
        yield from pool.map(check_shard, [out] * n, rows, [layout] * n, [expect] * n)


def validate(out: str, workers: int | None = None) -> ValidationReport:
    """Check every shard of OUT (a shard folder or a build folder) against its manifest."""
    manifest_url = fsio.join(out, MANIFEST)
    if not fsio.exists(manifest_url):
        raise GeoSSLError(
            f"{manifest_url}: no shard manifest here (run write-shards or build into {out} first)"
        )
    rows = sorted(read_table(manifest_url, "shard_manifest").to_pylist(), key=lambda r: r["shard"])
    report = ValidationReport(out=out, shards=len(rows))
    owner: dict[str, str] = {}
    workers = workers or os.cpu_count() or 1
    loaded, report.problems = _read_card(out)  # first: a bad card makes the label checks below moot
    card = loaded if isinstance(loaded, dict) else {}
    layout = card["layout"] if card.get("layout") in LAYOUTS else "locations"
    sound = not report.problems or loaded == {}  # a missing card: the fMoW defaults, as for old builds
    index = _read_sample_index(out)
    expect = _expectations(card if sound else None)
    checks = _check_all(out, rows, workers, layout, expect)
    named: dict[int, tuple[str, str]] = {}  # category_index -> (first name, a key holding it)
    for check in progress(checks, total=len(rows), desc="validate", unit="shard"):
        if not expect["categories"]:  # no names to check against: one name per id across the shards
            report.problems += _category_conflicts(check, named)
        if index is not None:
            report.problems += _index_mismatch(check, index.pop(check.shard, {}))
        report.samples += check.samples
        report.views += check.views
        report.bytes += check.bytes
        report.problems += [(check.shard, p) for p in check.problems]
        for key in check.keys:
            if key in owner and owner[key] != check.shard:
                report.problems.append((check.shard, f"{key} is also in {owner[key]}"))
            owner.setdefault(key, check.shard)
    if index:
        report.problems += [
            (SAMPLE_INDEX, f"lists {shard}, which the manifest does not") for shard in sorted(index)
        ]
    report.problems += _unlisted(out, {r["shard"] for r in rows})
    report.problems += _card_mismatch(card if sound else {}, rows)
    return report


def _read_card(out: str) -> tuple[object, list[tuple[str, str]]]:
    """OUT's dataset card as loaded ({} when missing, None when not JSON) and what is wrong with it."""
    url = fsio.join(out, DATASET_CARD)
    if not fsio.exists(url):
        return {}, [(DATASET_CARD, "missing")]
    try:
        loaded = json.loads(fsio.read_bytes(url))
    except ValueError as exc:
        return None, [(DATASET_CARD, f"unreadable ({exc})")]
    return loaded, [(DATASET_CARD, p) for p in card_problems(loaded)]


def _expectations(card: dict | None) -> dict:
    """What labels may hold, from a sound dataset card: k (cluster ids are 0..k-1) and the category names
    by id, as the card lists them (whatever the data set: fMoW's names, GeoImageNet's synsets). Without
    a sound card, or a card without categories, labels are only checked for negative cluster ids and for
    one name per category id across the shards (a bad card's k or names would make every sample look
    wrong, and no data set's list is assumed)."""
    if card is None:
        return {"k": None, "categories": {}}
    k = card.get("k")
    if not isinstance(k, int) or isinstance(k, bool):
        k = (card.get("geo_clusters") or {}).get("k") if isinstance(card.get("geo_clusters"), dict) else None
    return {"k": k if isinstance(k, int) else None, "categories": category_names(card) or {}}


def _category_conflicts(check: ShardCheck, named: dict[int, tuple[str, str]]) -> list[tuple[str, str]]:
    """Samples whose category_index another sample (this shard or an earlier one) gives another name;
    `named` keeps the first name of each id across calls."""
    problems = []
    for index, names in check.named.items():
        for name, key in names.items():
            first, first_key = named.setdefault(index, (name, key))
            if name != first:
                problems.append(
                    (
                        check.shard,
                        f"{key}: category {name!r} but category_index {index} is {first!r} in {first_key}",
                    )
                )
    return problems


def _label_problems(key: str, meta: object, expect: dict) -> list[str]:
    """Cluster id within [0, k), category_index a known id whose name is the sample's category."""
    if not isinstance(meta, dict):
        return []
    problems = []
    k, cluster = expect.get("k"), meta.get("cluster")
    if isinstance(cluster, int) and not isinstance(cluster, bool):
        if cluster < 0 or (k is not None and cluster >= k):
            problems.append(
                f"{key}: cluster {cluster} is outside 0..{k - 1 if k else '?'} (k={k} in the card)"
            )
    categories = expect.get("categories") or {}
    index, name = meta.get("category_index"), meta.get("category")
    if categories and isinstance(index, int) and not isinstance(index, bool):
        if index not in categories:
            problems.append(f"{key}: category_index {index} is not a category id (0..{max(categories)})")
        elif isinstance(name, str) and categories[index] != name:
            problems.append(f"{key}: category {name!r} but category_index {index} is {categories[index]!r}")
    return problems


def _unlisted(out: str, listed: set[str]) -> list[tuple[str, str]]:
    fs, path = fsio.get_fs(out)
    found = sorted(posixpath.basename(p) for p in fs.ls(path, detail=False) if p.endswith(".tar"))
    return [(name, "tar file on disk is not in the manifest") for name in found if name not in listed]


def _card_mismatch(card: dict, rows: list[dict]) -> list[tuple[str, str]]:
    """A sound dataset card's per-split counts must agree with the manifest ({}: nothing to compare)."""
    if not card:
        return []  # missing or unsound: already reported
    splits = card["splits"]
    problems = []
    for split in sorted({r["split"] for r in rows} | set(splits)):
        mine = [r for r in rows if r["split"] == split]
        have = {
            "shards": len(mine),
            "samples": sum(r["samples"] for r in mine),
            "views": sum(r["views"] for r in mine),
        }
        card = {k: splits.get(split, {}).get(k, 0) for k in have}
        if have != card:
            problems.append((DATASET_CARD, f"{split}: manifest has {have}, card says {card}"))
    return problems


def _read_sample_index(out: str) -> dict[str, dict[str, list]] | None:
    """shard -> key -> [(member, offset, size)] from OUT/sample_index.parquet; None when there is none."""
    url = fsio.join(out, SAMPLE_INDEX)
    if not fsio.exists(url):
        return None
    table = read_table(url, "sample_index", columns=["shard", "key", "members"])
    index: dict[str, dict[str, list]] = {}
    for shard, key, members in zip(
        *(table.column(c).to_pylist() for c in ("shard", "key", "members")), strict=True
    ):
        index.setdefault(shard, {})[key] = [(m["name"], m["offset"], m["size"]) for m in members]
    return index


def _index_mismatch(check: ShardCheck, listed: dict[str, list]) -> list[tuple[str, str]]:
    """The sample index must list every sample of the shard with its members' true offsets and sizes."""
    problems = []
    for key in sorted(set(check.spans) - set(listed)):
        problems.append((SAMPLE_INDEX, f"{check.shard}: {key} is not listed"))
    for key in sorted(set(listed) - set(check.spans)):
        problems.append((SAMPLE_INDEX, f"{check.shard}: lists {key}, which the shard does not hold"))
    for key in sorted(set(listed) & set(check.spans)):
        if sorted(listed[key]) != sorted(check.spans[key]):
            problems.append((SAMPLE_INDEX, f"{check.shard}: member offsets of {key} differ from the tar"))
    return problems[:_SHOWN] + (
        [(SAMPLE_INDEX, f"{check.shard}: {len(problems) - _SHOWN} more")] if len(problems) > _SHOWN else []
    )
