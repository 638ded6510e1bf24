"""ImageNet URL lists (`fall11_urls.txt` format) in: Flickr photo ids out, streamed, with rejects.

Each line is `{wnid}_{index}<TAB>{url}`. The real file has 14 M lines, mixed and broken encodings (some
URL fields are Latin-1, some are not text at all) and malformed lines, so it is read as bytes, one line
at a time; keys must be ASCII, URLs are decoded as UTF-8 or else Latin-1. Parsed entries go to Parquet in
batches as (photo_id, wnid, index): nothing per line stays in Python memory, and the unique photo ids
are found afterwards with numpy on one integer column (8 bytes per entry).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from geo_ssl.pipeline.common import fsio, storage
from geo_ssl.pipeline.common.errors import GeoSSLError

#: Every static-image URL form Flickr has served (see module doc of the tests for one example each):
#: farmN.static.flickr.com/{server}/, static.flickr.com/{server}/, farmN.staticflickr.com/{server}/,
#: cN.staticflickr.com/{farm}/{server}/, live.staticflickr.com/{server}/, photosN.flickr.com/[{server}/],
#: then {id}_{secret}[_{size}].{jpg|jpeg|gif|png}, optionally with a query or fragment. Any host may carry
#: an explicit port (`:80`, `:443`).
_PORT = rb"(?::\d{1,5})?"
_STATIC = re.compile(
    rb"^(?:https?://)?(?:"
    rb"(?:farm\d+\.)?static\.flickr\.com" + _PORT + rb"/\d+/"
    rb"|farm\d+\.staticflickr\.com" + _PORT + rb"/\d+/"
    rb"|c\d+\.staticflickr\.com" + _PORT + rb"/\d+/\d+/"
    rb"|live\.staticflickr\.com" + _PORT + rb"/\d+/"
    rb"|photos\d+\.flickr\.com" + _PORT + rb"/(?:\d+/)?"
    rb")(\d+)_[0-9a-f]+(?:_[a-z0-9]{1,2})?\.(?:jpe?g|gif|png)(?:[?#]\S*)?$",
    re.IGNORECASE,
)
_FLICKR_COM = rb"^(?:https?://)?(?:www\.|m\.)?flickr\.com" + _PORT
#: Photo pages: www.flickr.com/photos/{user}/{id}[/...], and the old www.flickr.com/photo.gne?id={id}.
_PAGE = re.compile(_FLICKR_COM + rb"/photos/[^/\s]+/(\d+)(?:[/?#]\S*)?$", re.I)
_GNE = re.compile(_FLICKR_COM + rb"/photo\.gne\?(?:[^#\s]*&)?id=(\d+)(?:[&#]\S*)?$", re.I)
#: Short links flic.kr/p/{base58 id}: the id's digits are case-sensitive, the rest is not.
BASE58 = b"123456789abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ"
_SHORT = re.compile(
    rb"^(?i:https?://)?(?i:www\.)?(?i:flic\.kr)" + _PORT + rb"/(?i:p)/([" + BASE58 + rb"]+)/?(?:[?#]\S*)?$"
)
_HOST = re.compile(rb"^(?:[a-z][a-z0-9+.-]*://)?([^/?#:\s]*)", re.IGNORECASE)
_KEY = re.compile(rb"^(n\d{8})_(\d{1,9})$")
#: Photo ids are stored as int64 (entries, results, the index): a larger "id" cannot be a Flickr photo.
PHOTO_ID_MAX = 2**63 - 1

#: Reject reasons of the URL stage (also listed in geo_ssl.schemas.REJECT_REASONS).
URL_REJECT_REASONS = {
    "malformed_line": "the line is not `{wnid}_{index}<TAB>{url}`",
    "bad_key": "the key is not an ImageNet `{wnid}_{index}`",
    "not_flickr": "the URL is not on a Flickr host",
    "unrecognised_flickr_url": "a Flickr URL with no photo id in any known form",
    "bad_photo_id": "the photo id in the URL is beyond the 64-bit range of Flickr photo ids",
}

ENTRY_SCHEMA = pa.schema(
    [
        pa.field("photo_id", pa.int64(), nullable=False),
        pa.field("wnid", pa.string(), nullable=False),
        pa.field("index", pa.int32(), nullable=False),
    ]
)


def photo_id(digits: bytes) -> int:
    """A decimal photo id as an int; ValueError when it is not one or does not fit in int64 (never an
    OverflowError later, when the id reaches an int64 column)."""
    digits = digits.strip()
    if not digits.isdigit() or len(digits.lstrip(b"0")) > 19 or int(digits) > PHOTO_ID_MAX:
        raise ValueError(f"not a photo id in [0, {PHOTO_ID_MAX}]: {digits[:40]!r}")
    return int(digits)


def _base58_id(text: bytes) -> int:
    """The photo id of a flic.kr/p/ short link (Flickr's base58: no 0, O, I or l)."""
    value = 0
    for char in text[:12]:  # 12 base58 digits exceed int64 already: never a huge loop
        value = value * 58 + BASE58.index(char)
    if len(text) > 12 or value > PHOTO_ID_MAX:
        raise ValueError(f"short link id beyond {PHOTO_ID_MAX}: {text[:40]!r}")
    return value


def flickr_photo_id(url: bytes | str) -> int | None:
    """The Flickr photo id in a static-image, photo-page or short-link URL, or None when there is none;
    ValueError when the URL has the form but its id does not fit in 64 bits."""
    raw = url.encode("utf-8", "surrogateescape") if isinstance(url, str) else url
    raw = raw.strip()
    if m := _SHORT.match(raw):
        return _base58_id(m.group(1))
    m = _STATIC.match(raw) or _PAGE.match(raw) or _GNE.match(raw)
    return photo_id(m.group(1)) if m else None


def is_flickr_host(url: bytes) -> bool:
    m = _HOST.match(url.strip())
    host = m.group(1).lower() if m else b""
    return host in (b"flickr.com", b"flic.kr") or host.endswith((b".flickr.com", b".staticflickr.com"))


def _text(raw: bytes, limit: int = 300) -> str:
    """URL bytes as text for a reject row: UTF-8, else Latin-1 (never fails), cut to `limit` chars."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text[:limit]


def parse_line(line: bytes) -> tuple[str, object]:
    """("ok", (photo_id, wnid, index)) or (reason, (key_text, url_text)) for one raw line."""
    line = line.rstrip(b"\r\n")
    key, tab, url = line.partition(b"\t")
    key = key.strip()
    url = url.strip()
    if not tab or not key or not url:
        return "malformed_line", (_text(key, 60), _text(url))
    km = _KEY.match(key)
    if km is None:
        return "bad_key", (_text(key, 60), _text(url))
    try:
        pid = flickr_photo_id(url)
    except ValueError:
        return "bad_photo_id", (key.decode("ascii"), _text(url))
    if pid is not None:
        return "ok", (pid, km.group(1).decode("ascii"), int(km.group(2)))
    if is_flickr_host(url):
        return "unrecognised_flickr_url", (key.decode("ascii"), _text(url))
    return "not_flickr", (key.decode("ascii"), _text(url))


COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4")


def iter_lines(url: str) -> Iterator[bytes]:
    """Raw lines of a local file (or FIFO) or fsspec URL, streamed (binary; no decoding)."""
    path = fsio.get_fs(url)[1]
    if fsio.is_local(url) and not url.endswith(COMPRESSED):  # plain open: 1 MB buffer; pipes work too
        with open(path, "rb", buffering=1 << 20) as f:
            yield from f
        return
    with fsspec.open(
        url, "rb", compression="infer", **storage.options_for(url)
    ) as f:  # .gz/.bz2/.xz/.zst decompressed on the fly
        yield from f


class _EntryWriter:
    """Buffers parsed entries in numpy-friendly lists and flushes them as Parquet row groups."""

    def __init__(self, path: str, batch: int) -> None:
        self._writer = pq.ParquetWriter(path, ENTRY_SCHEMA, compression="zstd")
        self._batch = batch
        self._ids: list[int] = []
        self._wnids: list[str] = []
        self._idx: list[int] = []
        self.rows = 0

    def add(self, pid: int, wnid: str, index: int) -> None:
        self._ids.append(pid)
        self._wnids.append(wnid)
        self._idx.append(index)
        if len(self._ids) >= self._batch:
            self.flush()

    def flush(self) -> None:
        if not self._ids:
            return
        table = pa.table(
            [
                pa.array(self._ids, pa.int64()),
                pa.array(self._wnids, pa.string()),
                pa.array(self._idx, pa.int32()),
            ],
            schema=ENTRY_SCHEMA,
        )
        self._writer.write_table(table)
        self.rows += len(self._ids)
        self._ids, self._wnids, self._idx = [], [], []

    def close(self) -> None:
        self.flush()
        self._writer.close()


def _refuse_if_not_a_url_list(urls: str, lines: int, entries: int, reasons: Counter, head: bytes) -> None:
    """GeoSSLError when no line has the `{wnid}_{index}<TAB>{url}` form: an empty file, a binary file or
    UTF-16 text would otherwise end `[ok]` with 0 entries, as if the list had no Flickr photo."""
    if entries or set(reasons) - {"blank_line", "malformed_line", "bad_key"}:
        return
    if lines == reasons["blank_line"]:
        why = "the file is empty" if lines == 0 else "the file has only blank lines"
    elif head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head:
        why = "it looks like UTF-16 text; save it as UTF-8 (or ASCII)"
    else:
        why = f"none of its {lines} lines has the form {{wnid}}_{{index}}<TAB>{{url}}"
    raise GeoSSLError(f"{urls}: not a URL list in fall11_urls.txt format ({why})")


def parse_url_list(
    urls: str,
    entries_out: str,
    stage: str = "harvest-flickr",
    batch: int = 100_000,
    max_rejects: int = 100_000,
) -> dict:
    """Stream URLS into ENTRIES_OUT (Parquet of photo_id, wnid, index), written atomically; GeoSSLError
    (and ENTRIES_OUT untouched) when URLS is not a URL list at all.

    Returns counts (lines, entries, rejected by reason) and up to `max_rejects` reject rows (REJECTS
    schema; every reject is counted even past the cap, so the summary still reconciles).
    """
    reasons: Counter = Counter()
    rejects: list[dict] = []
    lines = 0
    head = b""
    with fsio.atomic_local_path(entries_out) as tmp:
        writer = _EntryWriter(tmp, batch)
        try:
            for lines, raw in enumerate(iter_lines(urls), start=1):
                if lines == 1:
                    head = raw[:4]
                if not raw.strip():
                    reasons["blank_line"] += 1
                    continue
                status, value = parse_line(raw)
                if status == "ok":
                    writer.add(*value)
                    continue
                reasons[status] += 1
                if len(rejects) < max_rejects:
                    key, text = value
                    rejects.append({
                        "stage": stage, "path": f"{urls}:{lines}", "reason": status,
                        "detail": text, "split": None, "location_key": key or None,
                    })  # fmt: skip
        finally:
            writer.close()
        _refuse_if_not_a_url_list(urls, lines, writer.rows, reasons, head)  # before ENTRIES_OUT is replaced
    blank = reasons.pop("blank_line", 0)
    return {
        "lines": lines,
        "blank_lines": blank,
        "entries": writer.rows,
        "rejected": sum(reasons.values()),
        "reasons": dict(sorted(reasons.items())),
        "rejects": rejects,
    }


def unique_photo_ids(entries: str) -> np.ndarray:
    """Sorted unique photo ids of an entries file (one int64 column in memory, 8 bytes per entry)."""
    fs, path = fsio.get_fs(entries)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f, pre_buffer=False)
        parts = [
            np.unique(pf.read_row_group(i, columns=["photo_id"], use_threads=False).column(0).to_numpy())
            for i in range(pf.num_row_groups)
        ]
    if not parts:
        return np.zeros(0, np.int64)
    return np.unique(np.concatenate(parts))
