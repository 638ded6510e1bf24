"""Shard bytes to webdataset samples: a lean tar reader that survives damage, and the corrupt-sample
accounting of every loader.

A loader reads *slices*: samples [start, stop) of one shard, as counted by the manifest. Samples before
`start` are passed over without keeping their bytes (seeking where the stream allows), so a worker can
begin inside a shard. A damaged header (bad checksum, garbage fields) is reported with the shard and
byte offset, and the reader scans forward block by block for the next valid header and goes on; the
samples around the damage are skipped and counted. A shard that ends before the manifest's count (cut at
a member boundary, 0 bytes, random bytes) counts the samples it lacks as missing. Under `strict` each of
these raises `CorruptSampleError` instead.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from geo_ssl.pipeline.common.errors import GeoSSLError

_MAX_ERRORS_KEPT = 20
_MAX_CORRUPT_IN_A_ROW = 1000
_BLOCK = 512
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext: key up to the first dot


class CorruptSampleError(GeoSSLError):
    """strict=True: a sample could not be read; the message names the shard and the key or byte offset."""


@dataclass
class LoaderStats:
    """What the loader read. `corrupt` counts every sample skipped for bad data (first messages kept in
    `errors`); `missing` is the part of it the manifest promised but the shard did not hold; `refilled`
    counts samples read a second time to fill a worker's last batches after such skips; `retries` counts
    storage reads retried after a transient error."""

    samples: int = 0  # samples (locations, or views in eval with all_views) delivered in batches
    views_decoded: int = 0
    corrupt: int = 0
    missing: int = 0
    refilled: int = 0
    retries: int = 0
    shards_opened: int = 0
    errors: list[str] = field(default_factory=list)

    _COUNTS = ("samples", "views_decoded", "corrupt", "missing", "refilled", "retries", "shards_opened")

    def add(self, other: LoaderStats) -> None:
        for name in self._COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        room = _MAX_ERRORS_KEPT - len(self.errors)
        if room > 0:
            self.errors.extend(other.errors[:room])

    def take(self) -> LoaderStats:
        """Return the counts so far and reset (workers ship deltas with each batch)."""
        out = replace(self, errors=list(self.errors))
        for name in self._COUNTS:
            setattr(self, name, 0)
        self.errors.clear()
        return out

    def as_dict(self) -> dict:
        return {**{name: getattr(self, name) for name in self._COUNTS}, "errors": list(self.errors)}


class SampleErrors:
    """Our handler: count, remember, raise when strict. No sleep (webdataset's warn_and_continue sleeps 0.5 s)."""

    def __init__(self, stats: LoaderStats, strict: bool):
        self.stats, self.strict, self.in_a_row = stats, strict, 0

    def record(self, where: str, exc: BaseException | str, count: int = 1) -> None:
        msg = f"{where}: {exc}"
        if self.strict:
            raise CorruptSampleError(f"corrupt sample: {msg}") from (
                exc if isinstance(exc, BaseException) else None
            )
        self.stats.corrupt += count
        if len(self.stats.errors) < _MAX_ERRORS_KEPT:
            self.stats.errors.append(msg)
        self.in_a_row += count
        if self.in_a_row >= _MAX_CORRUPT_IN_A_ROW:
            raise GeoSSLError(f"{self.in_a_row} corrupt samples in a row, last: {msg}")

    def ok(self) -> None:
        self.in_a_row = 0


# ------------------------------------------------------------------------------------------ tar reading


def sample_key(fname: str) -> str | None:
    """The sample a member belongs to (webdataset's rule), or None for members no sample owns."""
    base = posixpath.basename(fname)
    if not fname or (base.startswith("__") and base.endswith("__")):
        return None
    m = _KEY_EXT.match(fname)
    return None if m is None else m.group(1)


def _header_ok(header: bytes) -> bool:
    """A plausible tar header: the stored checksum matches (unsigned sum, checksum field as spaces)."""
    stored = header[148:156].split(b"\0", 1)[0].strip()
    try:
        return bool(stored) and int(stored, 8) == sum(header) - sum(header[148:156]) + 256
    except ValueError:
        return False


def _member_size(header: bytes) -> int:
    size_field = header[124:136]
    if size_field[0] & 0x80:
        return int.from_bytes(size_field[1:], "big")
    return int(size_field.split(b"\0", 1)[0].strip() or b"0", 8)


class _Reader:
    """Position-tracking reads over a shard stream; skips by seeking when the stream can."""

    def __init__(self, stream):
        self.stream, self.pos = stream, 0
        try:
            self.can_seek = bool(stream.seekable())
        except (AttributeError, OSError):
            self.can_seek = False

    def read(self, n: int) -> bytes:
        data = self.stream.read(n)
        self.pos += len(data)
        return data

    def skip(self, n: int) -> bool:
        """Pass over n bytes; False when the stream ended first."""
        if n <= 0:
            return True
        if self.can_seek:
            self.stream.seek(self.pos + n)
            self.pos += n
            return True
        while n > 0:
            got = len(self.read(min(n, 1 << 20)))
            if not got:
                return False
            n -= got
        return True


class _Damage(Exception):
    """Internal: a header or member that cannot be read at `offset`."""

    def __init__(self, what: str, offset: int):
        super().__init__(f"{what} at byte {offset}")
        self.offset = offset


def tar_entries(
    stream, url: str, want: Callable[[str], bool], on_damage: Callable[[str], None]
) -> Iterator[tuple[str, bytes | None]]:
    """(member name, bytes) of the regular files of a POSIX tar; bytes is None where `want(name)` is False
    (the data is passed over, not read). Reads ustar, GNU long names and pax paths.

    A bad header calls `on_damage(message)` and resynchronises on the next 512-byte block that holds a
    valid header; `("", None)` is yielded right after a resync so the caller can drop the sample it was
    assembling. A member cut short ends the shard (after `on_damage`).
    """
    r = _Reader(stream)
    long_name: bytes | None = None
    while True:
        at = r.pos
        header = r.read(_BLOCK)
        if len(header) < _BLOCK:
            if header:
                on_damage(f"shard {url}: truncated tar header at byte {at}")
            return  # end of file without end-of-archive blocks: accepted, as tar does
        if header.count(0) == _BLOCK:
            return
        if not _header_ok(header):
            on_damage(f"shard {url}: bad tar header at byte {at}")
            found = _resync(r)
            if found is None:
                on_damage(f"shard {url}: no valid tar header after byte {at}; rest of shard skipped")
                return
            header = found
            long_name = None
            yield "", None
        try:
            size = _member_size(header)
        except ValueError:
            on_damage(f"shard {url}: bad size field in tar header at byte {r.pos - _BLOCK}")
            return
        kind = header[156:157]
        pad = -size % _BLOCK
        if kind in (b"L", b"x"):
            data = r.read(size)
            if len(data) < size or not r.skip(pad):
                on_damage(f"shard {url}: truncated tar member at byte {r.pos}")
                return
            if kind == b"L":
                long_name = data.rstrip(b"\0")
            else:
                for record in data.split(b"\n"):
                    if b" path=" in record:
                        long_name = record.split(b" path=", 1)[1]
            continue
        if kind not in (b"0", b"\0", b"7"):
            long_name = None
            if not r.skip(size + pad):
                return
            continue
        name = header[:100].split(b"\0", 1)[0]
        prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
        fname = (long_name or (prefix + b"/" + name if prefix else name)).decode("utf-8", "replace")
        long_name = None
        if want(fname):
            data = r.read(size)
            ok = len(data) == size and r.skip(pad)
        else:
            data, ok = None, r.skip(size + pad)
        if not ok:
            on_damage(f"shard {url}: truncated tar member {fname} at byte {r.pos}")
            return
        yield fname, data


def _resync(r: _Reader) -> bytes | None:
    """Scan forward block by block for a valid header (not an all-zero block); None at end of file."""
    while True:
        block = r.read(_BLOCK)
        if len(block) < _BLOCK:
            return None
        if block.count(0) != _BLOCK and _header_ok(block):
            return block


def slice_samples(
    stream,
    url: str,
    start: int,
    stop: int,
    errors: SampleErrors,
) -> Iterator[dict]:
    """Samples [start, stop) of one shard as webdataset dicts {"__key__", "__url__", ext: bytes}.

    Samples are members grouped by key (webdataset's rule: the path up to the first dot of the
    basename), counted from 0 in file order. Those before `start` are counted, not read. Samples that
    overlap a damaged header are skipped and recorded; when the shard ends before `stop`, the lacking
    samples are recorded as missing (errors.strict raises instead).
    """
    index = -1  # index of the sample being assembled
    key: str | None = None
    current: dict | None = None
    damaged = False  # the sample in progress may have lost members to damage: delivered only if complete
    damaged_next = False  # the first sample after a resync may have lost its leading members
    finished = 0  # samples of [start, stop) delivered or recorded as damaged

    def on_damage(message: str) -> None:
        nonlocal damaged
        damaged = True
        if errors.strict:
            where, what = message.split(": ", 1)
            errors.record(where, what)
        elif len(errors.stats.errors) < _MAX_ERRORS_KEPT:
            errors.stats.errors.append(message)

    def want(fname: str) -> bool:
        m = _KEY_EXT.match(fname)
        return m is not None and start <= index + (m.group(1) != key) < stop

    def finish() -> Iterator[dict]:
        nonlocal current, finished
        if current is None:
            return
        finished += 1
        sample, current = current, None
        if damaged and not _complete(sample):
            errors.record(
                f"shard {url} key {sample['__key__']}", "sample lost members in a damaged tar region"
            )
        else:
            yield sample

    for fname, data in tar_entries(stream, url, want, on_damage):
        if not fname:  # resynchronised after damage
            damaged = damaged_next = True
            continue
        base = posixpath.basename(fname)
        if base.startswith("__") and base.endswith("__"):
            continue
        m = _KEY_EXT.match(fname)
        if m is None:
            continue
        k, ext = m.group(1), m.group(2).lower()
        if k != key:
            yield from finish()
            index, key = index + 1, k
            damaged, damaged_next = damaged_next, False
            if index >= stop:
                return
            if index >= start:
                current = {"__key__": k, "__url__": url}
        elif damaged_next:  # resync landed inside the sample in progress
            damaged_next = False
        if current is not None:
            if ext in current:
                damaged = True
                continue
            current[ext] = data
    yield from finish()
    lacking = (stop - start) - finished
    if lacking > 0:
        errors.stats.missing += lacking
        errors.record(
            f"shard {url}",
            f"{lacking} of its samples {start}..{stop - 1} missing (the manifest lists more than the shard holds)",
            count=lacking,
        )


def _complete(sample: dict) -> bool:
    """A sample near damage is kept only when nothing is missing: cls, json, and every view it lists."""
    try:
        meta = json.loads(sample["json"])
        # a --layout views sample is one view, stored as its `jpg` member (schemas/SAMPLE_FORMAT.md)
        views = meta["views"] if "views" in meta or "view_index" not in meta else [{"field": "jpg"}]
        fields = [str(v["field"]) for v in views]
    except (KeyError, TypeError, ValueError):
        return False
    return "cls" in sample and bool(fields) and all(f in sample for f in fields)
