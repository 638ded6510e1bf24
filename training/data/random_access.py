"""Random access to a shard build: a map-style dataset over `sample_index.parquet` (issue 19, item 6).

The streaming loaders read shards front to back; a user who wants item 12345, a subset picked with
DuckDB, or a `DistributedSampler` needs indexable items. The sample index written beside the shards says
where every member's bytes lie in its tar, so one ranged read (a seek locally, a range GET on object
storage) fetches one view's JPEG without touching the rest of the shard.

One item is one stored view, as the eval loader's items with `all_views=True`: same key (`{key}/{NN}`,
`{key}/jpg` in the views layout), same category and geo cluster, same image (the eval transform: Resize +
CenterCrop + ImageNet normalisation, through the loader's own decode and transform). Views, not
locations, because a location's views vary in number and only single images batch with the default
collate.

    from torch.utils.data import DataLoader, DistributedSampler
    from geo_ssl.training.data.random_access import SampleIndexDataset
    ds = SampleIndexDataset("s3://bucket/shards", split="val", image_size=224)
    ds[0]  # {"image": float32 [3, 224, 224], "category": int, "geo_cluster": int, "key": "val-.../00"}
    loader = DataLoader(ds, batch_size=256, num_workers=8, sampler=DistributedSampler(ds))

`transform=None` yields the view's JPEG bytes as "jpeg" instead of "image" (decode it your own way).
Each read is retried as the loader's (`retry_io` with `shard_io.loader_policy`: `read_attempts` tries,
0.25 s doubling), then raises `StorageError` (exit 3: rerun later). Bytes that are not the indexed JPEG
(a shard cut short, a damaged image) raise `CorruptSampleError` naming shard, key and offset: a
map-style item cannot be skipped.
The dataset pickles without its filesystem client, which each process opens on first use.
"""

from __future__ import annotations

import io
import os

import fsspec
import numpy as np
from torch.utils.data import Dataset

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.retry import retry_io
from geo_ssl.pipeline.common.storage import options_for
from geo_ssl.training.data.augment import eval_params, finish_views
from geo_ssl.training.data.selection import Picked, render_views
from geo_ssl.training.data.shard_io import loader_policy
from geo_ssl.training.data.shard_list import ALL_SPLITS, join_url
from geo_ssl.training.data.tar_stream import CorruptSampleError

# = pipeline.shards.sample_index.SAMPLE_INDEX; training/data imports no pipeline module but pipeline.common
INDEX_NAME = "sample_index.parquet"
_TRANSFORMS = ("eval", None)
_COLUMNS = ["key", "shard", "split", "category_index", "cluster", "offset", "members"]


class SampleIndexDataset(Dataset):
    """Every stored view of `split` ("*": all splits) in shard and tar order, indexable; see the module doc."""

    def __init__(
        self,
        folder_or_url: str | os.PathLike,
        split: str,
        transform: str | None = "eval",
        image_size: int = 224,
        storage_options: dict | None = None,
        read_attempts: int = 6,
    ) -> None:
        if transform not in _TRANSFORMS:
            raise GeoSSLError(f"transform={transform!r}: choose 'eval' or None (the JPEG bytes)")
        if image_size < 8:
            raise GeoSSLError(f"image_size={image_size}: must be >= 8")
        self.folder = os.fspath(folder_or_url).rstrip("/")
        self.transform, self.image_size, self.storage_options = transform, image_size, storage_options
        self.read_attempts = read_attempts
        rows = _read_index(join_url(self.folder, INDEX_NAME), storage_options)
        splits = sorted({r["split"] for r in rows})
        if split != ALL_SPLITS:
            rows = [r for r in rows if r["split"] == split]
        if not rows:
            raise GeoSSLError(
                f"{join_url(self.folder, INDEX_NAME)}: no samples of split {split!r} "
                f"(it has: {', '.join(splits) or 'none'}; split='{ALL_SPLITS}' reads all)"
            )
        rows.sort(key=lambda r: (r["shard"], r["offset"]))  # tar order, as the eval loader streams them
        self.shards = sorted({r["shard"] for r in rows})
        shard_no = {name: i for i, name in enumerate(self.shards)}
        keys, where, labels = [], [], []
        for r in rows:
            for m in r["members"]:
                if m["name"] == "jpg" or m["name"].endswith(".jpg"):  # "00.jpg", ...; views layout: "jpg"
                    keys.append(f"{r['key']}/{m['name'].split('.')[0]}")
                    where.append((shard_no[r["shard"]], m["offset"], m["size"]))
                    labels.append((r["category_index"], r["cluster"]))
        self.keys: list[str] = keys  # item i's key; e.g. {k: i for i, k in enumerate(ds.keys)} to look up
        self._where = np.asarray(where, dtype=np.int64).reshape(-1, 3)  # (shard number, offset, size)
        self._labels = np.asarray(labels, dtype=np.int64).reshape(-1, 2)  # (category, geo cluster)
        self._fs: fsspec.AbstractFileSystem | None = None
        self._root, self._pid = "", -1

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} is outside the {len(self)} items")
        shard, offset, size = (int(v) for v in self._where[i])
        url, key = join_url(self.folder, self.shards[shard]), self.keys[i]
        data = self._read(self.shards[shard], offset, size)
        if len(data) != size:
            raise CorruptSampleError(
                f"shard {url} key {key}: {size} bytes indexed at offset {offset}, the shard has "
                f"{len(data)} there (cut short?)"
            )
        category, cluster = (int(v) for v in self._labels[i])
        item: dict = {"category": category, "geo_cluster": cluster, "key": key}
        if self.transform is None:
            item["jpeg"] = data
            return item
        picked = Picked(key, url, cluster, category, ("jpg",), {"jpg": data})
        try:
            crops, _ = render_views(picked, self.image_size, eval_params)
        except Exception as exc:  # the bytes were read whole: what fails here is the image, not storage
            raise CorruptSampleError(f"shard {url} key {key} at offset {offset}: bad JPEG ({exc})") from exc
        item["image"] = finish_views([crops[0]])[0]
        return item

    def _read(self, shard: str, offset: int, size: int) -> bytes:
        """One ranged read of a member's bytes in shard `shard` (a name), retried as the loader's reads."""
        if self._fs is None or self._pid != os.getpid():  # opened per process: no client crosses a fork
            options = self.storage_options or options_for(self.folder)
            self._fs, self._root = fsspec.core.url_to_fs(self.folder, **options)
            self._pid = os.getpid()
        fs, path, url = self._fs, join_url(self._root, shard), join_url(self.folder, shard)
        try:
            return retry_io(
                lambda: fs.cat_file(path, start=offset, end=offset + size),
                f"reading {url} bytes {offset}-{offset + size}",
                loader_policy(self.read_attempts),
            )
        except FileNotFoundError:
            raise GeoSSLError(f"{url}: listed in {INDEX_NAME} but missing (an incomplete copy?)") from None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fs"], state["_pid"] = None, -1  # a storage client does not travel to a worker
        return state


def _read_index(url: str, storage_options: dict | None) -> list[dict]:
    """The index rows (only the columns items need); a missing index is one line saying how to make it."""
    import pyarrow.parquet as pq

    from geo_ssl.schemas import SchemaError, check_metadata

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or options_for(url)))
    try:
        data = retry_io(lambda: fs.cat_file(path), f"reading {url}")
    except (FileNotFoundError, NotADirectoryError):
        raise GeoSSLError(
            f"{url}: not found; write-shards writes it beside the shards (rerun `geo-build-dataset "
            "write-shards` or `build` for this folder)"
        ) from None
    try:
        pf = pq.ParquetFile(io.BytesIO(data), pre_buffer=False)
        check_metadata(pf.schema_arrow, "sample_index", url)
        return pf.read(columns=_COLUMNS, use_threads=False).to_pylist()
    except (SchemaError, OSError, ValueError, KeyError) as exc:
        raise GeoSSLError(f"{url}: unreadable sample index ({exc})") from None


__all__ = ["SampleIndexDataset"]
