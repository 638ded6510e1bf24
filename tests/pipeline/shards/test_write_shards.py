"""write-shards end to end on a generated index: read back without geo-ssl, determinism, resume, rejects."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from geo_ssl.pipeline.cli import main as cli_main
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.shards.options import ShardOptions
from geo_ssl.pipeline.shards.write import write_shards
from tests.index_factory import TinyIndex, make_index

REPO = Path(__file__).resolve().parents[1]
OPTS = {"resize": 64, "shard_bytes": 24_000, "seed": 3}


def outputs(folder: Path) -> dict[str, bytes]:
    """Every output file of a shard folder except the dataset card (which names the input paths)."""
    return {
        p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != "dataset.json"
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyIndex:
    return make_index(tmp_path_factory.mktemp("tiny"), n_locations=12, unclustered=(5,))


@pytest.fixture(scope="module")
def built(tiny: TinyIndex, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("shards")
    summary = write_shards(str(tiny.index), str(out), options=ShardOptions(workers=2, **OPTS))
    return out, summary


def test_samples_read_back_with_plain_webdataset_and_tar(tiny: TinyIndex, built) -> None:
    import webdataset as wds

    out, summary = built
    assert summary.reconciles and summary.inputs == 12
    assert (summary.written, summary.rejected, summary.skipped) == (11, 1, 0)
    assert summary.reasons == {"no_cluster": 1}
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(manifest) >= 3 and [r["shard"] for r in manifest] == sorted(r["shard"] for r in manifest)
    assert {r["shard"] for r in manifest} == {p.name for p in out.glob("*.tar")}

    seen = {}
    for row in manifest:
        shard = str(out / row["shard"])
        samples = list(wds.WebDataset(shard, shardshuffle=False).decode("pil"))
        assert len(samples) == row["samples"]
        assert sum(s["json"]["n_views"] for s in samples) == row["views"]
        for s in samples:
            meta, key = s["json"], s["__key__"]
            jpgs = sorted(k for k in s if k.endswith(".jpg"))
            assert jpgs == [f"{i:02d}.jpg" for i in range(meta["n_views"])] and key not in seen
            assert int(s["cls"]) == meta["cluster"] and meta["key"] == key
            # all views, oldest first
            assert meta["n_views"] == len(tiny.images[key])
            stamps = sorted(tiny.times[key])
            assert [v["timestamp"] for v in meta["views"]] == [
                t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in stamps
            ]
            assert [v["view_id"] for v in meta["views"]] == sorted(
                range(meta["n_views"]), key=lambda v: tiny.times[key][v]
            )
            for field, view in zip(jpgs, meta["views"], strict=True):
                assert s[field].size == tuple(view["size"]) and min(view["size"]) <= 64
            seen[key] = row["split"]
        listing = subprocess.run(
            ["tar", "-tf", shard], capture_output=True, text=True, check=True
        ).stdout.split()
        keys = list(dict.fromkeys(name.split(".")[0] for name in listing))
        assert (
            keys == [s["__key__"] for s in samples]
            and keys[0] == row["first_key"]
            and keys[-1] == row["last_key"]
        )
        for key in keys:  # members of a sample are contiguous: NN.jpg..., cls, json
            fields = [n.split(".", 1)[1] for n in listing if n.split(".")[0] == key]
            assert fields[-2:] == ["cls", "json"] and all(f.endswith(".jpg") for f in fields[:-2])
        with tarfile.open(shard) as tar:
            assert {(m.mtime, m.mode, m.uid, m.gid) for m in tar.getmembers()} == {(0, 0o444, 0, 0)}
    assert set(seen) == set(tiny.keys) - {tiny.keys[5]}
    assert all(key.startswith(split) for key, split in seen.items())

    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert [(r["reason"], r["location_key"]) for r in rejects] == [("no_cluster", tiny.keys[5])]
    card = json.loads((out / "dataset.json").read_text())
    assert card["parameters"] == ShardOptions(**OPTS).as_dict() and card["seed"] == 3
    assert sum(s["samples"] for s in card["splits"].values()) == 11
    assert set(card["versions"]) == {"geo-ssl", "pillow", "webdataset", "pyarrow", "numpy"}


def test_shards_are_packed_by_estimated_bytes(built) -> None:
    out, _ = built
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    for split in ("train", "val"):
        rows = [r for r in manifest if r["split"] == split]
        assert [r["shard_index"] for r in rows] == list(range(len(rows)))
    # estimates are approximate; a shard never holds far more than the target unless it has one sample
    assert all(r["bytes"] < 3 * OPTS["shard_bytes"] or r["samples"] == 1 for r in manifest)


def test_two_runs_are_byte_identical_and_rerun_skips(tiny: TinyIndex, built, tmp_path: Path) -> None:
    out, _ = built
    again = tmp_path / "again"
    write_shards(str(tiny.index), str(again), options=ShardOptions(workers=1, **OPTS))
    assert outputs(again) == outputs(out)
    cards = [json.loads((d / "dataset.json").read_bytes()) for d in (again, out)]
    for folder, card in zip((again, out), cards, strict=True):  # inputs are recorded relative to OUT
        card["inputs"]["index"] = os.path.normpath(folder / card["inputs"]["index"])
        card["inputs"]["clusters"] = os.path.normpath(folder / card["inputs"]["clusters"])
    assert cards[0] == cards[1] and cards[0]["inputs"]["index"] == str(tiny.index)

    rerun = write_shards(str(tiny.index), str(again), options=ShardOptions(workers=1, **OPTS))
    assert (rerun.written, rerun.skipped, rerun.rejected) == (0, 11, 1) and rerun.reconciles

    manifest = pq.read_table(again / "manifest.parquet").to_pylist()
    (again / manifest[1]["shard"]).unlink()  # a lost shard is redone, the others are kept
    with open(again / manifest[0]["shard"], "r+b") as f:  # and so is a damaged one
        f.seek(700)
        f.write(b"\0\1\2")
    redo = write_shards(str(tiny.index), str(again), options=ShardOptions(workers=1, **OPTS))
    assert redo.extra["shards_written"] == 2
    assert redo.written == manifest[0]["samples"] + manifest[1]["samples"]
    assert outputs(again) == outputs(out)


def test_other_seed_shuffles_differently(tiny: TinyIndex, built, tmp_path: Path) -> None:
    out, _ = built
    other = write_shards(
        str(tiny.index), str(tmp_path), options=ShardOptions(workers=1, **{**OPTS, "seed": 4})
    )
    assert other.written == 11

    def order(folder: Path) -> list[str]:
        rows = pq.read_table(folder / "manifest.parquet").to_pylist()
        return [n.split(".")[0] for r in rows for n in tarfile.open(folder / r["shard"]).getnames()]

    assert order(tmp_path) != order(out)
    assert sorted(set(order(tmp_path))) == sorted(set(order(out)))


def test_other_options_into_the_same_folder_are_refused(tiny: TinyIndex, built, capsys) -> None:
    out, _ = built
    with pytest.raises(GeoSSLError, match=r"options differ: resize: 64 -> 96\); use a new --out or delete"):
        write_shards(str(tiny.index), str(out), options=ShardOptions(workers=1, **{**OPTS, "resize": 96}))
    args = [
        "write-shards",
        "--index",
        str(tiny.index),
        "--out",
        str(out),
        "--resize",
        "64",
        "--quality",
        "80",
    ]
    with pytest.raises(SystemExit) as code:
        cli_main(args)
    err = capsys.readouterr().err.strip()
    assert code.value.code == 2 and "\n" not in err and "quality" in err


def test_undecodable_views_are_rejected_and_counts_reconcile(tmp_path: Path) -> None:
    tiny = make_index(tmp_path / "idx", n_locations=6, splits=("train",), views=(1, 3), seed=5)
    multi = next(k for k in tiny.keys if len(tiny.images[k]) >= 2)
    single = next(k for k in tiny.keys if len(tiny.images[k]) == 1)
    for path in (tiny.images[multi][0], tiny.images[single][0]):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # truncated: no end-of-image marker
    out = tmp_path / "out"
    summary = write_shards(str(tiny.index), str(out), options=ShardOptions(workers=1, **OPTS))
    assert summary.reconciles and (summary.inputs, summary.written, summary.rejected) == (6, 5, 1)
    assert summary.reasons == {"decode_error": 2, "no_views": 1}
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert collections.Counter((r["reason"], r["location_key"]) for r in rejects) == {
        ("decode_error", multi): 1, ("decode_error", single): 1, ("no_views", single): 1,
    }  # fmt: skip
    assert {r["path"] for r in rejects if r["reason"] == "decode_error"} == {
        str(tiny.images[multi][0]), str(tiny.images[single][0]),
    }  # fmt: skip
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert sum(r["samples"] for r in manifest) == 5
    assert sum(r["views"] for r in manifest) == sum(len(v) for v in tiny.images.values()) - 2


def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    tiny = make_index(tmp_path / "idx", n_locations=40, splits=("train",), size=(320, 240), seed=7)
    flags = [
        "--index",
        str(tiny.index),
        "--workers",
        "1",
        "--shard-bytes",
        "1",
        "--resize",
        "160",
        "--no-dct",
    ]
    env = {**os.environ, "GEO_SSL_PROGRESS": "0"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "geo_ssl.pipeline.cli", "write-shards", *flags, "--out", str(killed)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    done = killed / "_done"

    def records() -> list[Path]:  # finished ones, not a record being written (".tmp-...json")
        return (
            [p for p in done.iterdir() if p.suffix == ".json" and not p.name.startswith(".")]
            if done.is_dir()
            else []
        )

    deadline = time.monotonic() + 60
    while not records():
        assert proc.poll() is None and time.monotonic() < deadline, "write-shards ended before any record"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = len(records())
    assert 1 <= finished < 40 and not (killed / "manifest.parquet").exists()

    summary = write_shards(str(tiny.index), str(killed), options=_options_of(flags))
    assert summary.reconciles and summary.skipped >= finished and summary.written == 40 - summary.skipped
    assert not [p for p in [*killed.iterdir(), *done.iterdir()] if p.name.startswith(".tmp-")]

    clean = tmp_path / "clean"
    write_shards(str(tiny.index), str(clean), options=_options_of(flags))
    assert (killed / "manifest.parquet").read_bytes() == (clean / "manifest.parquet").read_bytes()
    assert outputs(killed) == outputs(clean)


def _options_of(flags: list[str]) -> ShardOptions:
    """The ShardOptions the CLI builds from these flags (seed and quality left at their defaults)."""
    value = {f: flags[i + 1] for i, f in enumerate(flags) if f in ("--workers", "--shard-bytes", "--resize")}
    return ShardOptions(
        workers=int(value["--workers"]), shard_bytes=value["--shard-bytes"], resize=int(value["--resize"]),
        dct="--no-dct" not in flags,
    )  # fmt: skip


def test_object_store_output_via_fsspec(tiny: TinyIndex, built) -> None:
    """A non-local OUT (fsspec memory://, one process) gets the same files through upload."""
    import fsspec

    out, _ = built
    url = "memory://geo-ssl-test/shards"
    write_shards(str(tiny.index), url, options=ShardOptions(workers=1, **OPTS))
    fs = fsspec.filesystem("memory")
    for name, data in outputs(out).items():
        assert fs.cat_file(f"/geo-ssl-test/shards/{name}") == data, name
    assert len(fs.ls("/geo-ssl-test/shards/_done")) == len(list((out / "_done").iterdir()))
    rerun = write_shards(str(tiny.index), url, options=ShardOptions(workers=1, **OPTS))
    assert rerun.skipped == 11
    fs.rm("/geo-ssl-test", recursive=True)
