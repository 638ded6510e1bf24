"""Issue 17 (hardening 2), harvest-flickr: lock, object storage, bad ids, flags, lists, counts, rate, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from geo_ssl.pipeline.cli import main
from geo_ssl.pipeline.geoimagenet.harvest import harvest_flickr
from geo_ssl.pipeline.geoimagenet.store import ResultStore
from geo_ssl.pipeline.geoimagenet.urls import flickr_photo_id, parse_line
from tests.pipeline.geoimagenet.conftest import KEY, SECRET, make_photos, write_urls
from tests.pipeline.geoimagenet.test_harvest import _opts, _table

CLI = [sys.executable, "-m", "geo_ssl.pipeline.cli", "harvest-flickr"]
ENV = {**os.environ, "FLICKR_API_KEY": KEY, "FLICKR_API_SECRET": SECRET, "GEO_SSL_PROGRESS": "0"}


def _run_main(capsys, *args: str) -> tuple[int, str]:
    """The CLI's own entry point in this process: (exit code, stderr)."""
    with pytest.raises(SystemExit) as info:
        main(["harvest-flickr", *args])
    return info.value.code, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("geo-build-dataset: error: "), err
    return lines[0]


def _many_photos(n: int) -> dict[str, dict]:
    """make_photos(n) with every coordinate wrapped into range (past 50 photos its latitudes exceed 90)."""
    photos = make_photos(n)
    for p in photos.values():
        if "lat" in p:
            p["lat"], p["lon"] = (p["lat"] + 90) % 180 - 90, (p["lon"] + 180) % 360 - 180
    return photos


def _strict_json(path: Path) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"{path}: {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


# ---- item 2: one writer per --out; duplicates merged once ---------------------------------------------------


def test_a_second_harvest_into_the_same_out_stops_on_the_lock(tmp_path, standin_factory) -> None:
    photos = _many_photos(80)
    write_urls(tmp_path / "urls.txt", photos)
    s = standin_factory(photos)
    args = ["--urls", str(tmp_path / "urls.txt"), "--out", str(tmp_path / "out"), "--api-url", s.url,
            "--rate-limit", str(3600 * 10), "--batch", "5"]  # 81 photos at 10/s: about 8 s  # fmt: skip
    first = subprocess.Popen([*CLI, *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while s.state.stats()["requests"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    second = subprocess.run([*CLI, *args], env=ENV, capture_output=True, text=True, timeout=60)
    running = first.poll() is None
    _, err1 = first.communicate(timeout=60)
    assert second.returncode == 2, second.stderr
    assert "another run is writing here" in _one_error_line(second.stderr)
    assert running, "the first harvest ended before the second was refused: the lock was free by then"
    assert first.returncode == 0, err1
    assert max(s.state.stats()["calls"].values()) == 1  # no photo asked twice
    ids = pq.read_table(tmp_path / "out" / "flickr_geo.parquet").column("photo_id").to_pylist()
    assert len(ids) == len(set(ids)) == 81


def test_duplicate_answers_in_the_parts_are_merged_once(tmp_path, standin_factory, flickr_env) -> None:
    """Parts left by two unlocked runs of an older version hold some photos twice: the merge keeps one."""
    photos = make_photos(20)
    write_urls(tmp_path / "urls.txt", photos)
    s = standin_factory(photos)
    out = tmp_path / "out"
    harvest_flickr(str(tmp_path / "urls.txt"), str(out), _opts(s.url), limit=12)
    store = ResultStore(str(out))
    store.append(store.read_all().slice(0, 9).to_pylist())  # the same 9 answers once more, in a later part
    summary = harvest_flickr(str(tmp_path / "urls.txt"), str(out), _opts(s.url))
    ids = pq.read_table(out / "flickr_geo.parquet").column("photo_id").to_pylist()
    assert len(ids) == len(set(ids)) == 21
    assert (summary.inputs, summary.skipped, summary.reconciles) == (21, 0, True)
    assert summary.written + summary.rejected == 21 and summary.extra["calls_this_run"] == 9


# ---- item 6: --out on object storage -----------------------------------------------------------------------


def test_a_harvest_into_object_storage_keeps_every_answer(tmp_path, standin_factory, flickr_env) -> None:
    from tests.s3_support import bucket_fs, s3_with_faults

    photos = make_photos(30)
    write_urls(tmp_path / "urls.txt", photos)
    s = standin_factory(photos)
    out = "s3://geo-ssl-harvest/h"
    with s3_with_faults("geo-ssl-harvest") as endpoint:
        first = harvest_flickr(str(tmp_path / "urls.txt"), out, _opts(s.url))
        assert (first.inputs, first.skipped, first.reconciles) == (31, 0, True)
        assert first.written + first.rejected == 31
        fs = bucket_fs(endpoint.url)
        parts = sorted(fs.ls("geo-ssl-harvest/h/results"))
        stamps = {p: fs.info(p)["LastModified"] for p in parts}
        with fs.open("geo-ssl-harvest/h/flickr_geo.parquet", "rb") as f:
            assert pq.read_table(f).num_rows == 31
        calls = s.state.stats()["requests"]
        again = harvest_flickr(str(tmp_path / "urls.txt"), out, _opts(s.url))
        assert again.extra["calls_this_run"] == 0 and s.state.stats()["requests"] == calls
        assert (again.written, again.rejected, again.skipped) == (first.written, first.rejected, 0)
        assert {p: fs.info(p)["LastModified"] for p in parts} == stamps  # no part overwritten
        assert not fs.exists("geo-ssl-harvest/h/.geo-ssl.lock")  # the lock object is released


# ---- item 7: photo ids that do not fit in 64 bits ----------------------------------------------------------


def test_a_photo_id_beyond_int64_is_a_reject_not_a_traceback(tmp_path, standin_factory, flickr_env) -> None:
    big = 2**63
    static = "n01440000_5\thttp://farm1.static.flickr.com/2/{}_ab.jpg\n"
    assert parse_line(static.format(big).encode())[0] == "bad_photo_id"
    assert parse_line(static.format(big - 1).encode())[0] == "ok"
    page = b"n01440000_6\thttps://www.flickr.com/photos/u/" + b"9" * 5000 + b"\n"  # past int()'s digit limit
    assert parse_line(page)[0] == "bad_photo_id"
    photos = make_photos(9)
    extra = f"n01440000_2000\thttp://farm1.static.flickr.com/2/{big}_ab12.jpg\n".encode()
    write_urls(tmp_path / "urls.txt", photos, extra_lines=extra)
    cols = ["0", str(2**64), "h", "u", "n", "", "", "", "", "", "", "", "-3.5", "52.25", "16"] + [""] * 10
    good = ["1", "1003", "h", "u", "n", "", "", "", "", "", "", "", "-3.5", "52.25", "16"] + [""] * 10
    (tmp_path / "yfcc.tsv").write_text("\t".join(cols) + "\n" + "\t".join(good) + "\n")
    s = standin_factory(photos)
    summary = harvest_flickr(str(tmp_path / "urls.txt"), str(tmp_path / "out"), _opts(s.url),
                             yfcc=str(tmp_path / "yfcc.tsv"))  # fmt: skip
    assert summary.reconciles and summary.inputs == 10 and summary.skipped == 0
    assert summary.extra["url_list"]["reasons"]["bad_photo_id"] == 1
    assert summary.extra["yfcc_lines_unused"]["bad_photo_id"] == 1 and summary.extra["from_yfcc"] == 1
    rejects = pq.read_table(tmp_path / "out" / "url_rejects.parquet").to_pylist()
    assert [r["location_key"] for r in rejects if r["reason"] == "bad_photo_id"] == ["n01440000_2000"]


# ---- items 21, 31: numbers refused up front ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--rate-limit", "inf"), ("--rate-limit", "nan"), ("--rate-limit", "0"), ("--rate-limit", "-5"),
     ("--timeout", "0"), ("--timeout", "-1"), ("--timeout", "nan"), ("--timeout", "inf"),
     ("--retry-base", "nan"), ("--flush-seconds", "-1")],
)  # fmt: skip
def test_bad_numbers_are_refused_on_one_line(tmp_path, capsys, flickr_env, flag, value) -> None:
    write_urls(tmp_path / "urls.txt", make_photos(3))
    code, err = _run_main(capsys, "--urls", str(tmp_path / "urls.txt"), "--out", str(tmp_path / "out"),
                          "--api-url", "http://127.0.0.1:9/services/rest/", flag, value)  # fmt: skip
    assert code == 2
    line = _one_error_line(err)
    assert f"{flag}: " in line and value in line
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_the_summary_is_strict_json(tmp_path, standin_factory, flickr_env) -> None:
    photos = make_photos(4)
    write_urls(tmp_path / "urls.txt", photos)
    s = standin_factory(photos)
    harvest_flickr(str(tmp_path / "urls.txt"), str(tmp_path / "out"), _opts(s.url))
    summary = _strict_json(tmp_path / "out" / "harvest_summary.json")
    assert summary["parameters"]["rate_limit"] == 3600 * 200


# ---- item 22: not a URL list -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"", os.urandom(4096), "n01440764_1\thttp://farm1.static.flickr.com/2/111_ab.jpg\n".encode("utf-16")],
    ids=["empty", "random-bytes", "utf-16"],
)
def test_not_a_url_list_is_refused(tmp_path, capsys, standin_factory, flickr_env, content) -> None:
    photos = make_photos(5)
    write_urls(tmp_path / "good.txt", photos)
    s = standin_factory(photos)
    out = tmp_path / "out"
    harvest_flickr(str(tmp_path / "good.txt"), str(out), _opts(s.url))
    entries = (out / "entries.parquet").read_bytes()
    (tmp_path / "bad.txt").write_bytes(content)
    code, err = _run_main(capsys, "--urls", str(tmp_path / "bad.txt"), "--out", str(out), "--api-url", s.url)
    assert code == 2
    line = _one_error_line(err)
    assert "bad.txt" in line and "not a URL list" in line
    assert (out / "entries.parquet").read_bytes() == entries  # the harvest already there is untouched


# ---- item 23: another list's answers in the same --out -----------------------------------------------------


def test_another_lists_answers_are_not_counted(tmp_path, standin_factory, flickr_env) -> None:
    photos = make_photos(40)
    ids = sorted(photos)
    list_a = {k: photos[k] for k in ids[:30]}
    list_b = {k: photos[k] for k in ids[25:]}  # 5 photos shared with A, 10 new
    write_urls(tmp_path / "a.txt", list_a)
    write_urls(tmp_path / "b.txt", list_b)
    s = standin_factory(photos)
    out = tmp_path / "out"
    harvest_flickr(str(tmp_path / "a.txt"), str(out), _opts(s.url))
    b = harvest_flickr(str(tmp_path / "b.txt"), str(out), _opts(s.url), limit=4)
    # B: 15 photos + 1000 (live URL line) + 77777 (absent photo), both answered by A already
    assert b.inputs == 17 and b.reconciles and b.skipped == 6
    assert b.extra["answered_before"] == 7 and b.extra["answered_this_run"] == 4
    assert b.extra["answered_total"] == 11 and b.written + b.rejected == 11
    assert _strict_json(out / "harvest_summary.json")["skipped"] == 6


# ---- item 24: the rate limit at the edge of a window -------------------------------------------------------


def test_no_one_second_window_sees_more_than_the_limit(tmp_path, standin_factory, flickr_env) -> None:
    photos = make_photos(45)  # 46 calls at 10/s: before the fix, 11 landed within 1 s in every run
    write_urls(tmp_path / "urls.txt", photos)
    s = standin_factory(photos, latency=0.01)
    harvest_flickr(str(tmp_path / "urls.txt"), str(tmp_path / "out"), _opts(s.url, rate_limit=36000))
    times = sorted(s.state.times)
    assert len(times) == 46
    worst = max(sum(1 for u in times[i:] if u - t <= 1.0) for i, t in enumerate(times))
    assert worst <= 10, [round(b - a, 4) for a, b in zip(times, times[10:], strict=False)]


# ---- item 27: SIGTERM flushes like Ctrl-C ------------------------------------------------------------------


def test_sigterm_keeps_every_answer_received_and_exits_143(tmp_path, standin_factory) -> None:
    photos = _many_photos(200)
    write_urls(tmp_path / "urls.txt", photos)
    server = standin_factory(photos, latency=0.05)
    args = ["--urls", str(tmp_path / "urls.txt"), "--out", str(tmp_path / "out"), "--api-url", server.url,
            "--batch", "1000", "--concurrency", "2", "--rate-limit", "360000"]  # fmt: skip
    proc = subprocess.Popen([*CLI, *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while len(server.state.stats()["answers"]) < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    line = err.decode().strip().splitlines()
    assert len(line) == 1 and "SIGTERM" in line[0] and "rerun" in line[0], err
    saved = pq.read_table(tmp_path / "out" / "results").column("photo_id").to_pylist()
    answered = server.state.stats()["answers"]
    assert len(saved) >= 6 and len(answered) - len(saved) <= 2  # only the calls in flight are lost
    again = subprocess.run([*CLI, *args], env=ENV, capture_output=True, timeout=120)
    assert again.returncode == 0, again.stderr
    calls = server.state.stats()["calls"]
    assert max(calls[str(p)] for p in saved) == 1  # a flushed photo is not asked again
    assert len(_table(tmp_path / "out")) == 201


# ---- item 29: short links, photo.gne, explicit ports -------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "pid"),
    [
        ("https://flic.kr/p/2kT9g9d", 51118224264),
        ("http://flic.kr/p/8K2Lum/", 5081451476),
        ("flic.kr/p/2", 1),
        ("https://www.flickr.com/photo.gne?id=14654888764", 14654888764),
        ("http://flickr.com/photo.gne?rb=1&id=123456", 123456),
        ("http://farm4.static.flickr.com:80/3175/2737866473_7958dc8760.jpg", 2737866473),
        ("https://live.staticflickr.com:443/65535/52192984450_5f2e1d0c9b_k.jpg", 52192984450),
        ("http://www.flickr.com:80/photos/someuser/14654888764", 14654888764),
    ],
)
def test_short_links_photo_gne_and_ports(url: str, pid: int) -> None:
    assert flickr_photo_id(url) == pid
    assert parse_line(f"n01440764_7\t{url}\n".encode()) == ("ok", (pid, "n01440764", 7))


def test_a_short_link_that_is_not_base58_is_an_unrecognised_flickr_url() -> None:
    assert parse_line(b"n01440764_7\thttps://flic.kr/p/0OIl\n")[0] == "unrecognised_flickr_url"
    assert parse_line(b"n01440764_7\thttps://flic.kr/s/aHsk\n")[0] == "unrecognised_flickr_url"
    assert parse_line(b"n01440764_7\thttps://flic.kr/p/" + b"z" * 12 + b"\n")[0] == "bad_photo_id"
