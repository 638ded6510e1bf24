"""A geo-ssl shard folder in the peers' formats: MosaicML streaming's MDS and litdata's optimized chunks, for
the side-by-side in bench_loader_latency. Runs in .venv-peers (the peers are not in the test venv):

    .venv-peers/bin/python -m tests.bench.peer_formats SHARDS OUT    # writes OUT/mds, OUT/litdata

One peer sample per location with the same fields as the webdataset sample: `key`, `json` and `cls` as
stored, and `views`, the location's JPEG members ({member: bytes}, a variable count) packed into one bytes
field, since neither format takes a variable set of columns. Shards are cut at about geo-ssl's shard
size, so each format fetches a similar number of similar-sized files. After writing, each format is read
back with its own reader and every location's members must equal the tar's, byte for byte.
"""

from __future__ import annotations

import argparse
import json
import pickle
import tarfile
from collections.abc import Iterator
from pathlib import Path

MDS_COLUMNS = {"key": "str", "json": "bytes", "cls": "bytes", "views": "bytes"}
_META = ("__key__", "json", "cls")


def tar_shards(folder: Path) -> list[list[dict]]:
    """The webdataset samples of each shard of `folder`, in shard order: [{"__key__", member: bytes}]."""
    shards = []
    for path in sorted(folder.glob("*.tar")):
        samples: list[dict] = []
        with tarfile.open(path) as tar:
            for member in tar:
                key, _, field = member.name.partition(".")
                if not samples or key != samples[-1]["__key__"]:
                    samples.append({"__key__": key})
                samples[-1][field] = tar.extractfile(member).read()
        shards.append(samples)
    return shards


def to_peer(sample: dict) -> dict:
    """A webdataset sample as one peer record (the module doc's four fields)."""
    views = {k: v for k, v in sample.items() if k not in _META}
    return {
        "key": sample["__key__"],
        "json": sample["json"],
        "cls": sample["cls"],
        "views": pickle.dumps(views),
    }


def from_peer(record: dict) -> dict:
    """A peer record back to the webdataset sample geo-ssl's view selection reads."""
    return {
        "__key__": record["key"],
        "json": record["json"],
        "cls": record["cls"],
        **pickle.loads(record["views"]),
    }


def write_mds(shards: list[list[dict]], out: Path) -> None:
    """One MDS shard per geo-ssl shard: a writer per shard into its own subfolder, then MosaicML's
    merge_index (its documented way to join partitions written apart) makes the one index.json."""
    from streaming import MDSWriter
    from streaming.base.util import merge_index

    for i, samples in enumerate(shards):
        with MDSWriter(out=str(out / f"{i:06d}"), columns=MDS_COLUMNS, size_limit=None) as w:
            for s in samples:
                w.write(to_peer(s))
    merge_index(str(out), keep_local=True)


def write_litdata(shards: list[list[dict]], out: Path) -> None:
    """Chunks of as many locations as geo-ssl's largest shard (the bench's shards differ by at most one).
    litdata's writer is used directly: optimize() writes the same chunks through a process pool that a
    conversion of a few shards does not need."""
    from litdata.streaming.writer import BinaryWriter

    w = BinaryWriter(str(out), chunk_size=max(len(s) for s in shards))
    for i, s in enumerate(s for samples in shards for s in samples):
        w.add_item(i, to_peer(s))
    w.done()
    w.merge()


def read_mds(folder: Path) -> Iterator[dict]:
    from streaming.base.format import reader_from_json

    index = json.loads((folder / "index.json").read_text())
    for info in index["shards"]:
        reader = reader_from_json(str(folder), None, info)  # basenames carry the subfolder
        for i in range(reader.samples):
            yield reader.get_item(i)


def read_litdata(folder: Path) -> Iterator[dict]:
    from litdata import StreamingDataset

    yield from StreamingDataset(str(folder), shuffle=False)


def check_same(source: list[dict], records: Iterator[dict], name: str) -> int:
    """Every location's members equal the tar's (keys, json, cls, each view's bytes); returns the count."""
    want = {s["__key__"]: s for s in source}
    seen = set()
    for record in records:
        got = from_peer(record)
        if got != want.get(got["__key__"]):
            raise AssertionError(f"{name}: location {got['__key__']} differs from the tar")
        seen.add(got["__key__"])
    if seen != set(want):
        raise AssertionError(
            f"{name}: {len(set(want) - seen)} locations missing, {len(seen - set(want))} extra"
        )
    return len(seen)


def convert(shards: Path, out: Path) -> dict:
    """OUT/mds and OUT/litdata from the shard folder (remade), each checked; returns what was written."""
    import shutil

    tars = tar_shards(shards)
    if not tars:
        raise SystemExit(f"peer_formats: error: {shards}: no .tar shards")
    samples = [s for shard in tars for s in shard]
    result: dict = {"locations": len(samples), "tar_shards": len(tars)}
    for name, write, read in (("mds", write_mds, read_mds), ("litdata", write_litdata, read_litdata)):
        folder = out / name
        shutil.rmtree(folder, ignore_errors=True)
        write(tars, folder)
        files = [f for f in folder.rglob("*") if f.is_file() and f.name != "index.json"]
        result[name] = {
            "folder": str(folder),
            "files": len(files),
            "bytes": sum(f.stat().st_size for f in files),
            "checked": check_same(samples, read(folder), name),
        }
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("shards", type=Path, help="a geo-ssl shard folder (*.tar)")
    p.add_argument("out", type=Path)
    args = p.parse_args(argv)
    print(json.dumps(convert(args.shards, args.out)))


if __name__ == "__main__":
    main()
