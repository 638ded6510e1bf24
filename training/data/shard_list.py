"""Which shards a loader reads, and how many samples each holds (from the manifest, else one header scan)."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence

import braceexpand
import fsspec

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.storage import options_for  # the command's --storage-* settings


def resolve_shards(
    urls: str | Sequence[str], split: str | None = None, storage_options: dict | None = None
) -> list[str]:
    """Expand brace patterns, list folders (all *.tar, or `{split}-*.tar` when split is given)."""
    items = [urls] if isinstance(urls, str | os.PathLike) else list(urls)
    out: list[str] = []
    for item in items:
        for url in braceexpand.braceexpand(os.fspath(item)):
            if url.endswith(".tar"):
                out.append(url)
                continue
            fs, path = fsspec.core.url_to_fs(url, **(storage_options or options_for(url)))
            if not fs.isdir(path):
                raise GeoSSLError(f"{url}: not a .tar shard nor a folder of shards")
            prefix = f"{split}-" if split else ""
            names = sorted(
                posixpath.basename(p)
                for p in fs.ls(path, detail=False)
                if p.endswith(".tar") and posixpath.basename(p).startswith(prefix)
            )
            out.extend(join_url(url, name) for name in names)
    if not out:
        raise GeoSSLError(f"no shards found at {urls!r}" + (f" for split {split!r}" if split else ""))
    return out


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


def _manifest_counts(folder: str, storage_options: dict | None) -> dict[str, tuple[int, int]]:
    import pyarrow.parquet as pq

    from geo_ssl.schemas import SchemaError, check_metadata

    url = join_url(folder, "manifest.parquet") if folder else "manifest.parquet"
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or options_for(url)))
        if not fs.exists(path):
            return {}
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            check_metadata(pf.schema_arrow, "shard_manifest", url)
            rows = pf.read(columns=["shard", "samples", "views"]).to_pylist()
    except (SchemaError, OSError, ValueError) as exc:
        raise GeoSSLError(f"{url}: unreadable shard manifest ({exc})") from exc
    return {r["shard"]: (int(r["samples"]), int(r["views"])) for r in rows}


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
