"""harvest-flickr over real HTTP: the real flickrapi client against the stand-in started here."""

from __future__ import annotations

import bz2
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.geoimagenet.harvest import HarvestOptions, harvest_flickr
from tests.pipeline.geoimagenet.conftest import KEY, SECRET, make_photos, write_urls

EXPECTED = {"ok": "ok", "no_location": "no_location", "geo_not_public": "no_location",
            "not_found": "not_found", "permission_denied": "permission_denied"}  # fmt: skip


def _opts(url: str, **kw) -> HarvestOptions:
    base = dict(api_url=url, rate_limit=3600 * 200, concurrency=4, batch=5, retry_base=0.01, timeout=2)
    base.update(kw)
    return HarvestOptions(**base)


def _table(out: Path) -> dict[int, dict]:
    rows = pq.read_table(out / "flickr_geo.parquet").to_pylist()
    return {r["photo_id"]: r for r in rows}


def _cli(args: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
    full = {**os.environ, "GEO_SSL_PROGRESS": "1", "HOME": "/nonexistent-home", **(env or {})}
    full.pop("FLICKR_API_KEY", None)
    full.pop("FLICKR_API_SECRET", None)
    return subprocess.Popen([sys.executable, "-m", "geo_ssl.pipeline.cli", *args], env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)  # fmt: skip


def _no_secret_anywhere(root: Path, *texts: bytes) -> None:
    for blob in texts:
        assert KEY.encode() not in blob and SECRET.encode() not in blob
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert KEY.encode() not in data and SECRET.encode() not in data, path


def test_every_status_retries_and_rerun(tmp_path, standin_factory, flickr_env) -> None:
    photos = make_photos(40)
    photos["1001"]["faults"] = ["429", "500", "drop"]  # recovers on the 4th call
    photos["1002"]["faults"] = ["105", "201", "garbage", "no_message"]
    photos["1004"]["faults"] = ["slow"]
    write_urls(tmp_path / "urls.txt", photos)
    s = standin_factory(photos, slow_seconds=4.0)
    summary = harvest_flickr(str(tmp_path / "urls.txt"), str(tmp_path / "out"), _opts(s.url, timeout=1.5))
    assert summary.reconciles and summary.inputs == 41  # 40 photos + one outside the table
    table = _table(tmp_path / "out")
    assert len(table) == 41
    for pid, p in photos.items():
        assert table[int(pid)]["status"] == EXPECTED[p["behaviour"]], pid
    assert table[77777]["status"] == "not_found" and table[77777]["error_code"] == 1
    assert table[1001]["attempts"] == 4 and table[1002]["attempts"] == 5 and table[1004]["attempts"] == 2
    assert table[1003]["error_code"] == 2 and table[1007]["error_code"] == 99
    # value quirks: the old shape (numbers, place ids) and the modern one (strings) parse alike
    assert table[1000]["lat"] == -60.0 and table[1000]["region"] == "R" and table[1000]["locality"] is None
    assert table[1001]["locality"] == "Town 1" and table[1001]["accuracy"] == 2
    stats = s.state.stats()
    assert max(stats["answers"].values()) == 1  # one answer per photo, the photo backing 2 entries too
    assert summary.extra["calls_this_run"] == stats["requests"]
    # a rerun asks nothing and keeps the same table
    again = harvest_flickr(str(tmp_path / "urls.txt"), str(tmp_path / "out"), _opts(s.url))
    assert again.extra["calls_this_run"] == 0 and s.state.stats()["requests"] == stats["requests"]
    assert _table(tmp_path / "out") == table


def test_exhausted_retries_are_left_to_the_rerun(tmp_path, standin_factory, flickr_env) -> None:
    photos = make_photos(9)
    photos["1004"]["faults"] = ["502", "502", "502"]
    write_urls(tmp_path / "urls.txt", photos)
    s = standin_factory(photos)
    first = harvest_flickr(str(tmp_path / "urls.txt"), str(tmp_path / "out"), _opts(s.url, max_attempts=2))
    assert first.skipped == 1 and first.extra["failed_this_run"] == 1 and first.reconciles
    assert 1004 not in _table(tmp_path / "out")  # an I/O failure is not an answer about the photo
    second = harvest_flickr(str(tmp_path / "urls.txt"), str(tmp_path / "out"), _opts(s.url, max_attempts=2))
    assert second.skipped == 0 and _table(tmp_path / "out")[1004]["status"] == "ok"
    assert second.extra["calls_this_run"] == 2  # the failed photo only (one 502 left, then the answer)


@pytest.mark.parametrize(
    ("key_state", "message"),
    [("invalid", "Flickr refused the key: invalid API key"), ("down", "service is unavailable")],
)
def test_key_level_errors_stop_with_one_line(tmp_path, standin_factory, key_state, message) -> None:
    photos = make_photos(12)
    write_urls(tmp_path / "urls.txt", photos)
    s = standin_factory(photos, key_state=key_state)
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"api_key": KEY, "api_secret": SECRET}))
    proc = _cli(["harvest-flickr", "--urls", str(tmp_path / "urls.txt"), "--out", str(tmp_path / "out"),
                 "--api-url", s.url, "--credentials", str(creds), "--max-attempts", "2", "--retry-base", "0.01",
                 "--rate-limit", "360000"])  # fmt: skip
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    lines = [ln for ln in err.decode().splitlines() if ln.startswith("geo-build-dataset:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err.decode()
    creds.unlink()
    _no_secret_anywhere(tmp_path, out, err)


def test_wrong_secret_is_a_bad_signature(tmp_path, standin_factory, monkeypatch) -> None:
    photos = make_photos(3)
    write_urls(tmp_path / "urls.txt", photos)
    s = standin_factory(photos)
    monkeypatch.setenv("FLICKR_API_KEY", KEY)
    monkeypatch.setenv("FLICKR_API_SECRET", "not-the-secret")
    with pytest.raises(GeoSSLError, match="invalid signature") as info:
        harvest_flickr(str(tmp_path / "urls.txt"), str(tmp_path / "out"), _opts(s.url))
    assert KEY not in str(info.value) and "not-the-secret" not in str(info.value)


def test_missing_credentials_is_a_user_error(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("FLICKR_API_KEY", raising=False)
    monkeypatch.delenv("FLICKR_API_SECRET", raising=False)
    (tmp_path / "urls.txt").write_bytes(b"")
    with pytest.raises(GeoSSLError, match="FLICKR_API_KEY"):
        harvest_flickr(str(tmp_path / "urls.txt"), str(tmp_path / "out"))


def test_rate_limit_is_never_exceeded(tmp_path, standin_factory, flickr_env) -> None:
    photos = make_photos(24)
    write_urls(tmp_path / "urls.txt", photos)
    s = standin_factory(photos, latency=0.05)
    harvest_flickr(str(tmp_path / "urls.txt"), str(tmp_path / "out"), _opts(s.url, rate_limit=3600 * 12))
    times = sorted(s.state.times)
    assert len(times) == 25
    for i, t in enumerate(times):  # any 1-second window holds at most 12 call starts (+1 for the edge)
        assert sum(1 for u in times[i:] if u - t < 1.0) <= 13
    assert (times[-1] - times[0]) >= 24 / 12 * 0.9


def test_yfcc_join_saves_calls(tmp_path, standin_factory, flickr_env) -> None:
    photos = make_photos(18)
    write_urls(tmp_path / "urls.txt", photos)
    lines = []
    for n, pid in enumerate(["1003", "1005", "1009", "5555"]):  # no-location and not-found on Flickr, too
        cols = [str(n), pid, "hash", "u@N00", "nick", "2010-01-01", "1262304000", "cam", "t", "d", "", "",
                "-3.5", "52.25", "16"] + [""] * 10  # longitude BEFORE latitude  # fmt: skip
        lines.append("\t".join(cols))
    lines.append("\t".join(["9", "1010", "h"] + [""] * 22))  # in YFCC but not geotagged: still asked
    (tmp_path / "yfcc.tsv.bz2").write_bytes(
        bz2.compress(("\n".join(lines) + "\n").encode())
    )  # as distributed
    s = standin_factory(photos)
    summary = harvest_flickr(str(tmp_path / "urls.txt"), str(tmp_path / "out"), _opts(s.url),
                             yfcc=str(tmp_path / "yfcc.tsv.bz2"))  # fmt: skip
    table = _table(tmp_path / "out")
    for pid in (1003, 1005, 1009):
        assert table[pid]["source"] == "yfcc" and table[pid]["status"] == "ok"
        assert (table[pid]["lat"], table[pid]["lon"], table[pid]["accuracy"]) == (52.25, -3.5, 16)
        assert str(pid) not in s.state.stats()["calls"]
    assert 5555 not in table and table[1010]["source"] == "api"
    assert summary.extra["calls_saved_by_yfcc"] == 3 and summary.extra["calls_this_run"] == 19 - 3


def _kill_when_parts(proc: subprocess.Popen, results: Path, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if results.is_dir() and len(list(results.glob("part-*.parquet"))) >= n:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            return
        if proc.poll() is not None:
            pytest.fail(f"harvest ended before it could be killed: {proc.stderr.read().decode()[-500:]}")
        time.sleep(0.02)
    pytest.fail("no result part appeared in time")


def test_kill9_then_rerun_matches_an_uninterrupted_run(tmp_path, standin_factory) -> None:
    photos = make_photos(60)
    photos["1013"]["faults"] = ["500"]
    write_urls(tmp_path / "urls.txt", photos)
    creds = tmp_path / "creds.env"
    creds.write_text(f"FLICKR_API_KEY={KEY}\nFLICKR_API_SECRET={SECRET}\n")
    common = ["--urls", str(tmp_path / "urls.txt"), "--credentials", str(creds), "--concurrency", "3",
              "--batch", "4", "--retry-base", "0.01", "--rate-limit", str(3600 * 100)]  # fmt: skip

    ref_server = standin_factory({k: dict(v) for k, v in photos.items()}, latency=0.01)
    ref = _cli(["harvest-flickr", "--out", str(tmp_path / "ref"), "--api-url", ref_server.url, *common])
    out, err = ref.communicate(timeout=60)
    assert ref.returncode == 0, err

    first = standin_factory({k: dict(v) for k, v in photos.items()}, latency=0.04)
    proc = _cli(["harvest-flickr", "--out", str(tmp_path / "run"), "--api-url", first.url, *common])
    _kill_when_parts(proc, tmp_path / "run" / "results", 3)
    saved = pq.read_table(tmp_path / "run" / "results").column("photo_id").to_pylist()
    assert 0 < len(saved) < 61 and len(saved) == len(set(saved))

    second = standin_factory({k: dict(v) for k, v in photos.items()}, latency=0.01)
    again = _cli(["harvest-flickr", "--out", str(tmp_path / "run"), "--api-url", second.url, *common])
    out2, err2 = again.communicate(timeout=60)
    assert again.returncode == 0, err2
    called_again = set(second.state.stats()["calls"]) & {str(p) for p in saved}
    assert not called_again  # an answered photo is never asked twice
    lost = set(first.state.stats()["answers"]) - {str(p) for p in saved}
    assert len(lost) <= 4 + 2 * 3, lost  # the unflushed batch, the results queue and the calls in flight

    def norm(path: Path) -> list[dict]:
        rows = pq.read_table(path).drop(["answered_at"]).to_pylist()
        return sorted(rows, key=lambda r: r["photo_id"])

    final = norm(tmp_path / "run" / "flickr_geo.parquet")
    assert [r["photo_id"] for r in final] == sorted({r["photo_id"] for r in final})
    ref_rows = norm(tmp_path / "ref" / "flickr_geo.parquet")
    assert final == ref_rows, [(a, b) for a, b in zip(final, ref_rows, strict=False) if a != b][:3]
    assert "photo/s" in err2.decode() and "calls/h" in err2.decode()  # the progress bar
    creds.unlink()
    _no_secret_anywhere(tmp_path, out, err, out2, err2)


def test_ctrl_c_keeps_every_answer_received(tmp_path, standin_factory) -> None:
    photos = make_photos(200)  # about 5 s of calls: the SIGINT lands mid-run even on a busy machine
    write_urls(tmp_path / "urls.txt", photos)
    server = standin_factory(photos, latency=0.05)
    env = {"FLICKR_API_KEY": KEY, "FLICKR_API_SECRET": SECRET}
    proc = subprocess.Popen(
        [sys.executable, "-m", "geo_ssl.pipeline.cli", "harvest-flickr", "--urls", str(tmp_path / "urls.txt"),
         "--out", str(tmp_path / "out"), "--api-url", server.url, "--batch", "1000", "--concurrency", "2", "--rate-limit", "360000"],
        env={**os.environ, **env, "GEO_SSL_PROGRESS": "0"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal, not `&`
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while len(server.state.stats()["answers"]) < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and b"rerun the same command to resume" in err
    saved = pq.read_table(tmp_path / "out" / "results").column("photo_id").to_pylist()
    answered = server.state.stats()["answers"]
    assert len(saved) >= 6 and len(answered) - len(saved) <= 2  # only the calls in flight are lost
