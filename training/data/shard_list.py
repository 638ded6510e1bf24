"""Which shards a loader reads, and how many samples each holds (from the manifest, else one header scan)."""

from __future__ import annotations

import io
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field

import braceexpand
import fsspec

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.retry import retry_io  # a store that is down: StorageError (exit 3)
from geo_ssl.pipeline.common.storage import options_for  # the command's --storage-* settings

#: `split` value that selects every split of a folder (a loader must name its split: LoaderConfig.split).
ALL_SPLITS = "*"


def resolve_shards(
    urls: str | Sequence[str], split: str | None = None, storage_options: dict | None = None
) -> list[str]:
    """Expand brace patterns, list folders (all *.tar, or `{split}-*.tar` when split is given; "*" is
    every split)."""
    return _expand(urls, split, storage_options)[0]


def _expand(
    urls: str | Sequence[str], split: str | None, storage_options: dict | None
) -> tuple[list[str], dict[str, dict[str, int]]]:
    """(shard URLs, {listed folder: {shard name: bytes}}): the sizes come with the folder listing."""
    items = [urls] if isinstance(urls, str | os.PathLike) else list(urls)
    out: list[str] = []
    listed: dict[str, dict[str, int]] = {}
    prefix = f"{split}-" if split and split != ALL_SPLITS else ""
    for item in items:
        for url in braceexpand.braceexpand(os.fspath(item)):
            if url.endswith(".tar"):
                out.append(url)
                continue
            fs, path = fsspec.core.url_to_fs(url, **(storage_options or options_for(url)))
            if not retry_io(lambda fs=fs, path=path: fs.isdir(path), f"listing {url}"):
                raise GeoSSLError(f"{url}: not a .tar shard nor a folder of shards")
            sizes = retry_io(lambda fs=fs, path=path: _sizes(fs, path), f"listing {url}")
            names = sorted(n for n in sizes if n.startswith(prefix))
            folder = url.rstrip("/")
            listed[folder] = sizes
            out.extend(join_url(folder, name) for name in names)
    if not out:
        raise GeoSSLError(f"no shards found at {urls!r}" + (f" for split {split!r}" if split else ""))
    return out, listed


def _sizes(fs, path: str) -> dict[str, int]:
    """{name: bytes} of the .tar files in one folder: one listing (a LIST on object storage)."""
    return {
        posixpath.basename(e["name"].rstrip("/")): int(e.get("size") or 0)
        for e in fs.ls(path, detail=True)
        if e["name"].endswith(".tar") and e.get("type") != "directory"
    }


def join_url(folder: str, name: str) -> str:
    return folder.rstrip("/") + "/" + name


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def open_shard(url: str, storage_options: dict | None):
    if is_local(url):
        return open(url.removeprefix("file://"), "rb", buffering=1 << 20)
    return fsspec.open(url, "rb", **(storage_options or options_for(url))).open()


def shard_counts(shards: Sequence[str], storage_options: dict | None = None) -> list[tuple[int, int]]:
    """(samples, views) per shard: from manifest.parquet beside the shards when it lists them, else by
    reading the tar headers once."""
    known: dict[str, tuple[int, int]] = {}
    for folder in sorted({posixpath.dirname(s) for s in shards}):
        known.update({join_url(folder, k): v for k, v in _manifest_counts(folder, storage_options).items()})
    return [known[s] if s in known else _scan_counts(s, storage_options) for s in shards]


@dataclass(frozen=True)
class ShardSet:
    """The shards a loader reads after comparing them with manifest.parquet beside them, where there is
    one: `left_out` has one line per shard not read (listed but absent; present but not the build's),
    `lost` the samples the manifest lists in shards left out (counted as missing by the loaders),
    `sha256` the manifest's per shard ("" without a manifest; empty for a list kept before it): what
    ShardCache checks a fetched shard against, with no second read of the manifest."""

    shards: list[str]
    counts: list[tuple[int, int]]  # (samples, views) per shard
    left_out: list[str] = field(default_factory=list)
    lost: int = 0
    sha256: list[str] = field(default_factory=list)

    def refuse(self) -> None:
        """--strict: the first shard left out, as one line."""
        if self.left_out:
            more = f" (and {len(self.left_out) - 1} more shard(s))" if len(self.left_out) > 1 else ""
            raise GeoSSLError(
                f"{self.left_out[0]}{more}; --strict refuses shards that disagree with manifest.parquet"
            )


def select_shards(
    urls: str | Sequence[str],
    split: str | None = None,
    storage_options: dict | None = None,
    strict: bool = False,
) -> ShardSet:
    """The shards of `urls` (resolve_shards) checked against their folder's manifest.parquet: a shard the
    manifest lists for the split but the folder lacks is left out and its samples count as lost; a shard
    the manifest does not list, or whose size says it is another build's (larger than recorded, or a whole
    tar of another size), is left out with its reason. A shard only cut short is kept: the reader counts
    what it lacks. Sizes come from one listing per folder (no read of the shards); strict raises on the
    first shard left out."""
    shards, listed = _expand(urls, split, storage_options)
    rows_of: dict[str, dict[str, dict]] = {}
    sizes_of = dict(listed)
    keep: list[str] = []
    counts: list[tuple[int, int]] = []
    sha256: list[str] = []
    left_out: list[str] = []
    lost = 0
    for url in shards:
        folder, name = posixpath.dirname(url), posixpath.basename(url)
        if folder not in rows_of:
            rows_of[folder] = _manifest_rows(folder, storage_options)
        rows = rows_of[folder]
        if not rows:  # no manifest: nothing to compare with; counted from the headers
            keep.append(url)
            counts.append(_scan_counts(url, storage_options))
            sha256.append("")
            continue
        if folder not in sizes_of:
            fs, path = fsspec.core.url_to_fs(folder or ".", **(storage_options or options_for(url)))
            sizes_of[folder] = retry_io(lambda fs=fs, path=path: _sizes(fs, path), f"listing {folder or '.'}")
        row, size = rows.get(name), sizes_of[folder].get(name)
        problem = _not_the_build(url, row, size, storage_options)
        if problem:
            left_out.append(f"shard {url}: {problem}")
            lost += int(row["samples"]) if row else 0
            continue
        keep.append(url)
        counts.append((int(row["samples"]), int(row["views"])))
        sha256.append(str(row["sha256"]))
    for folder, sizes in listed.items():  # listed for this split in the manifest, absent from the folder
        for name, row in sorted(rows_of.get(folder, {}).items()):
            if name not in sizes and split in (None, ALL_SPLITS, row["split"]):
                left_out.append(f"shard {join_url(folder, name)}: {_not_the_build(name, row, None, None)}")
                lost += int(row["samples"])
    out = ShardSet(keep, counts, left_out, lost, sha256)
    if strict:
        out.refuse()
    if not keep:
        raise GeoSSLError(f"no usable shards at {urls!r}: {left_out[0] if left_out else 'none listed'}")
    return out


def _not_the_build(url: str, row: dict | None, size: int | None, storage_options: dict | None) -> str:
    """Why a shard is not the one manifest.parquet lists ("" when it is, or is only cut short)."""
    if row is None:
        return "not listed in manifest.parquet (another build's shard?)"
    if size is None:
        return f"listed in manifest.parquet ({row['samples']} samples) but not in the folder"
    recorded = int(row["bytes"])
    if size == recorded or (size < recorded and not _whole_tar(url, size, storage_options)):
        return ""  # the same, or cut short: read, and what it lacks is counted (tar_stream)
    return f"{size} bytes, manifest.parquet records {recorded} (another build's shard?)"


def _whole_tar(url: str, size: int, storage_options: dict | None) -> bool:
    """The shard ends with a tar's end-of-archive blocks (1024 zero bytes): written whole, not cut short.
    One ranged read of the last 1 KiB, only for a shard whose size differs from its manifest."""
    if size < 1024:
        return False
    try:
        with open_shard(url, storage_options) as f:
            f.seek(size - 1024)
            return f.read(1024) == bytes(1024)
    except OSError:
        return False  # unreadable now: the reader reports it


def _manifest_counts(folder: str, storage_options: dict | None) -> dict[str, tuple[int, int]]:
    rows = _manifest_rows(folder, storage_options)
    return {name: (int(r["samples"]), int(r["views"])) for name, r in rows.items()}


def _manifest_rows(folder: str, storage_options: dict | None) -> dict[str, dict]:
    """{shard name: its manifest.parquet row (split, samples, views, bytes, sha256)}; {} without one."""
    import pyarrow.parquet as pq

    from geo_ssl.schemas import SchemaError, check_metadata

    url = join_url(folder, "manifest.parquet") if folder else "manifest.parquet"
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or options_for(url)))
        if not retry_io(lambda: fs.exists(path), f"reading {url}"):
            return {}
        data = retry_io(lambda: fs.cat_file(path), f"reading {url}")
        pf = pq.ParquetFile(io.BytesIO(data), pre_buffer=False)
        check_metadata(pf.schema_arrow, "shard_manifest", url)
        # No pool threads (pre_buffer's async reads, use_threads' column reads): one could still be releasing
        # the Python buffer when the interpreter exits, and aborted it ("terminate called without an active
        # exception", exit 134 instead of a one-line error's 2; seen after torch was imported).
        columns = ["shard", "split", "samples", "views", "bytes", "sha256"]
        rows = pf.read(columns=columns, use_threads=False).to_pylist()
    except (SchemaError, OSError, ValueError) as exc:
        raise GeoSSLError(f"{url}: unreadable shard manifest ({exc})") from exc
    return {r["shard"]: r for r in rows}


def _scan_counts(url: str, storage_options: dict | None) -> tuple[int, int]:
    """Count samples (groups of members sharing a key, as the loader reads them) and views (jpg members)
    from the headers only; damage is passed over here and reported when the loader reads the shard."""
    from geo_ssl.training.data.tar_stream import sample_key, tar_entries

    samples = views = 0
    last = None
    try:
        with open_shard(url, storage_options) as f:
            for name, _ in tar_entries(f, url, lambda _name: False, lambda _msg: None):
                key = sample_key(name)
                if key is None:
                    continue
                if key != last:
                    samples, last = samples + 1, key
                views += name.endswith(".jpg")
    except OSError as exc:
        raise GeoSSLError(f"{url}: cannot read shard ({exc})") from exc
    return samples, views
