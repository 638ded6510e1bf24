"""A harvest with nothing left to ask makes no call and no reachability check: it reruns with Flickr down.

The first run happens in this process, with the real flickrapi client against the stand-in over HTTP; every
rerun is a fresh CLI process (its first-contact probe remembers nothing), made after the stand-in was
stopped or against an --api-url nothing ever listened at.
"""

from __future__ import annotations

import bz2
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from geo_ssl.pipeline import cli
from geo_ssl.pipeline.common.retry import EXIT_STORAGE
from geo_ssl.pipeline.geoimagenet.flickr_standin import load_photo_table
from geo_ssl.pipeline.geoimagenet.harvest import HarvestOptions, harvest_flickr
from geo_ssl.pipeline.geoimagenet.synth import synth_imagenet
from tests.pipeline.geoimagenet.conftest import KEY, SECRET, make_photos, write_urls
from tests.s3_support import free_port

CLI = [sys.executable, "-m", "geo_ssl.pipeline.cli"]


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GEO_SSL_PROGRESS": "0", "HOME": str(tmp_path)}
    env.pop("FLICKR_API_KEY", None)
    env.pop("FLICKR_API_SECRET", None)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=60)


def _creds(tmp_path: Path) -> str:
    path = tmp_path / "creds"
    path.write_text(f"{KEY}\n{SECRET}\n")
    return str(path)


def _harvest_args(tmp_path: Path, urls: Path, api_url: str, *extra: str) -> list[str]:
    return ["harvest-flickr", "--urls", str(urls), "--out", str(tmp_path / "out"), "--api-url", api_url,
            "--credentials", _creds(tmp_path), "--rate-limit", "720000", "--retry-base", "0.01",
            "--timeout", "2", *extra]  # fmt: skip


def _opts(url: str) -> HarvestOptions:
    return HarvestOptions(api_url=url, rate_limit=720000, retry_base=0.01, timeout=2)


def _rows(path: Path) -> list[dict]:
    return sorted(pq.read_table(path).to_pylist(), key=lambda r: r["photo_id"])


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_a_finished_harvest_reruns_with_the_api_down(tmp_path, standin_factory) -> None:
    photos = make_photos(12)
    urls = tmp_path / "urls.txt"
    write_urls(urls, photos)
    s = standin_factory(photos)
    first = harvest_flickr(str(urls), str(tmp_path / "out"), _opts(s.url), credentials=_creds(tmp_path))
    assert first.extra["calls_this_run"] == s.state.stats()["requests"] > 0
    table = _rows(tmp_path / "out" / "flickr_geo.parquet")
    assert len(table) == 13  # 12 photos + one outside the stand-in's table (not_found)
    s.stop()  # Flickr is down from here on: nothing listens at s.url

    again = _run(_harvest_args(tmp_path, urls, s.url), tmp_path)
    out = _ok(again)
    assert "unreachable" not in again.stderr
    assert "calls this run: 0 " in out and "left to a rerun: 0" in out
    assert "harvest-flickr:" in out and "[ok]" in out
    assert _rows(tmp_path / "out" / "flickr_geo.parquet") == table

    # one photo left to ask: the first-contact check still fails at once, and nothing answered is lost
    with urls.open("a") as f:
        f.write("n01440000_2000\thttp://farm1.static.flickr.com/2/88888_ab.jpg\n")
    started = time.monotonic()
    left = _run(_harvest_args(tmp_path, urls, s.url), tmp_path)
    assert left.returncode == EXIT_STORAGE and time.monotonic() - started < 15, left.stderr[-2000:]
    assert f"Flickr API unreachable at {s.url}: connection refused" in left.stderr
    assert _rows(tmp_path / "out" / "flickr_geo.parquet") == table


def test_yfcc_locating_every_photo_needs_no_api(tmp_path) -> None:
    pids = [4001, 4002, 4003]
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"n01440764_{i}\thttp://farm1.static.flickr.com/1/{pid}_ab.jpg\n"
                            for i, pid in enumerate(pids)))  # fmt: skip
    lines = []
    for n, pid in enumerate(pids):
        cols = [str(n), str(pid), "h", "u@N00", "nick", "2010-01-01", "1262304000", "cam", "t", "d", "", "",
                "-3.5", "52.25", "16"] + [""] * 10  # fmt: skip
        lines.append("\t".join(cols))
    yfcc = tmp_path / "yfcc.tsv.bz2"
    yfcc.write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))
    dead = f"http://127.0.0.1:{free_port()}/services/rest/"  # nothing ever listened there
    out = _ok(_run(_harvest_args(tmp_path, urls, dead, "--yfcc", str(yfcc)), tmp_path))
    assert "calls this run: 0 " in out and "calls saved by the YFCC join: 3" in out
    rows = _rows(tmp_path / "out" / "flickr_geo.parquet")
    assert [(r["photo_id"], r["source"], r["status"]) for r in rows] == [(p, "yfcc", "ok") for p in pids]


def test_a_finished_build_reruns_with_the_api_down(tmp_path, standin_factory) -> None:
    world = synth_imagenet(str(tmp_path / "synth"), classes=1, per_class=3, seed=5)
    s = standin_factory(load_photo_table(world["photos"]))
    args = ["build", "--source", "geoimagenet", "--root", world["root"], "--urls", world["urls"],
            "--words", world["words"], "--credentials", _creds(tmp_path), "--api-url", s.url,
            "--rate-limit", "720000", "--out", str(tmp_path / "build"), "--k", "1", "--resize", "32",
            "--workers", "1"]  # fmt: skip
    assert cli.run(args) == 0  # the first build, in this process (its probe found the stand-in up)
    assert s.state.stats()["requests"] > 0
    geo = tmp_path / "build" / "harvest" / "flickr_geo.parquet"
    table = _rows(geo)
    s.stop()
    again = _run(args, tmp_path)
    out = _ok(again)
    assert "unreachable" not in again.stderr and "calls this run: 0 " in out
    assert _rows(geo) == table
