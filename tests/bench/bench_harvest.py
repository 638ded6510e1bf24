"""Benchmark GeoImageNet's Flickr path: harvest calls/s against the rate limit, and URL-list parsing.

    python -m tests.bench.bench_harvest --out bench-out/harvest

1. Harvest: the real CLI (`geo-build-dataset harvest-flickr`, real flickrapi client) against the Flickr
   stand-in in this process, which answers every call after 200 ms (a realistic round trip). The real
   limit, 3,600 calls/hour, is scaled to 20 calls/s so a run takes seconds; the photos asked are capped
   with --limit so each variant runs about 20 s. Rates are measured at the server from request arrival
   times: overall calls/s and the most calls in any 1-second window (the limit allows 20, +1 at the edge);
   the limiter spaces call starts exactly, so what remains above 100.0% is arrival jitter (about 1 ms).
   Baseline in the same run: one call at a time (--concurrency 1) under the same limit.
2. URL parsing: fall11_urls.txt-format lines generated on the fly into a FIFO (no disk), parsed by
   `parse_url_list` in a fresh process, at 1 M, 3 M and 10 M lines: lines/s and peak RSS (VmHWM) after
   parsing, and after the dedupe of photo ids (one int64 column; grows with the number of entries).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KEY, SECRET = "benchkey0123456789abcdef01234567", "benchsecret01234"
LATENCY = 0.2
LIMIT_PER_S = 20.0


# ----------------------------------------------------------------------------------------------------------
# 1. harvest throughput


def _photos(n: int) -> dict[str, dict]:
    return {str(10_000 + i): {"id": str(10_000 + i), "behaviour": "ok" if i % 5 else "no_location",
                              "lat": (i % 170) - 85.0, "lon": (i % 350) - 175.0, "accuracy": 16}
            for i in range(n)}  # fmt: skip


def _run_harvest(tmp: Path, name: str, concurrency: int, limit: int, n_photos: int) -> dict:
    from geo_ssl.pipeline.geoimagenet.flickr_standin import FlickrStandin

    photos = _photos(n_photos)
    urls = tmp / "urls.txt"
    if not urls.exists():
        urls.write_text("".join(f"n0144{i % 10:04d}_{i}\thttp://farm1.static.flickr.com/1/{pid}_ab12.jpg\n"
                                for i, pid in enumerate(sorted(photos))))  # fmt: skip
    run_dir = tmp / f"run-c{concurrency}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh harvest: a resumed one would ask nothing
    with FlickrStandin(photos, KEY, SECRET, latency=LATENCY) as server:
        env = {**os.environ, "FLICKR_API_KEY": KEY, "FLICKR_API_SECRET": SECRET, "GEO_SSL_PROGRESS": "0"}
        cmd = [sys.executable, "-m", "geo_ssl.pipeline.cli", "harvest-flickr", "--urls", str(urls),
               "--out", str(run_dir), "--api-url", server.url, "--rate-limit", str(LIMIT_PER_S * 3600),
               "--concurrency", str(concurrency), "--limit", str(limit), "--batch", "100"]  # fmt: skip
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, env=env, cwd=REPO)
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            raise SystemExit(f"harvest failed: {proc.stderr.decode()[-2000:]}")
        times = sorted(server.state.times)
    span = times[-1] - times[0]
    rate = (len(times) - 1) / span if span > 0 else 0.0
    j = 0
    window_max = 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        window_max = max(window_max, i - j + 1)
    return {"variant": name, "concurrency": concurrency, "calls": len(times), "span_s": round(span, 2),
            "calls_per_s": round(rate, 2), "of_limit": round(rate / LIMIT_PER_S, 4),
            "max_calls_in_1s": window_max, "wall_s": round(wall, 1)}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# 2. URL parsing: generator into a FIFO, parser in its own process


def _block(n: int = 100_000) -> bytes:
    """A realistic mix: half Flickr (every form), half other hosts, a little junk."""
    from geo_ssl.pipeline.geoimagenet.synth import URL_FORMS

    lines = []
    for i in range(n):
        key = f"n{1440764 + i % 21841:08d}_{i}"
        pid = 2_000_000_000 + i * 7919
        if i % 1000 == 0:
            lines.append(b"broken line without a tab\n")
        elif i % 2:
            url = URL_FORMS[i % len(URL_FORMS)].format(farm=1 + i % 9, server=1000 + i % 7000, pid=pid,
                                                       secret=f"{i * 2654435761 % 16**10:010x}")  # fmt: skip
            lines.append(f"{key}\t{url}\n".encode())
        else:
            lines.append(f"{key}\thttp://www.example{i % 97}.com/images/photo_{i}.jpg\n".encode())
    return b"".join(lines)


def _feed(fifo: str, n_lines: int) -> None:
    block = _block()
    per = block.count(b"\n")
    with open(fifo, "wb") as f:
        left = n_lines
        while left > 0:
            if left >= per:
                f.write(block)
                left -= per
            else:
                f.write(b"".join(block.splitlines(keepends=True)[:left]))
                left = 0


_PARSER = """
import json, sys, time
from geo_ssl.pipeline.geoimagenet.urls import parse_url_list, unique_photo_ids
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM'):
            return int(line.split()[1]) / 1024
t0 = time.perf_counter()
res = parse_url_list(sys.argv[1], sys.argv[2])
t1 = time.perf_counter()
after_parse = hwm()
uniq = unique_photo_ids(sys.argv[2])
print(json.dumps({"lines": res["lines"], "entries": res["entries"], "rejected": res["rejected"],
                  "parse_s": t1 - t0, "rss_parse_mb": after_parse, "unique": int(len(uniq)), "rss_dedupe_mb": hwm()}))
"""


def _parse(tmp: Path, n_lines: int) -> dict:
    fifo = str(tmp / f"urls-{n_lines}.fifo")
    if os.path.exists(fifo):
        os.unlink(fifo)
    os.mkfifo(fifo)
    feeder = threading.Thread(target=_feed, args=(fifo, n_lines), daemon=True)
    feeder.start()
    out = subprocess.run([sys.executable, "-c", _PARSER, fifo, str(tmp / f"entries-{n_lines}.parquet")],
                         capture_output=True, cwd=REPO)  # fmt: skip
    feeder.join()
    os.unlink(fifo)
    (tmp / f"entries-{n_lines}.parquet").unlink(missing_ok=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr.decode()[-2000:])
    res = json.loads(out.stdout)
    res["lines_per_s"] = round(res["lines"] / res["parse_s"])
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="bench-out/harvest")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the limited harvest run")
    p.add_argument("--sizes", default="1000000,3000000,10000000", help="URL-list sizes in lines")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "work"
    tmp.mkdir(exist_ok=True)

    n_limited = int(LIMIT_PER_S * args.seconds)
    n_base = int(args.seconds / LATENCY / 2)  # the baseline is slow: half the time is enough to measure it
    harvest = [
        _run_harvest(tmp, "baseline: one call at a time", 1, n_base, n_limited),
        _run_harvest(tmp, "harvest-flickr --concurrency 4 (default)", 4, n_limited, n_limited),
        _run_harvest(tmp, "harvest-flickr --concurrency 8", 8, n_limited, n_limited),
    ]
    base = harvest[0]["calls_per_s"]
    parsing = [_parse(tmp, int(n)) for n in args.sizes.split(",")]

    md = [f"Harvest against the stand-in at {LATENCY * 1000:.0f} ms per call, limit {LIMIT_PER_S:.0f} calls/s "
          f"(3,600/h scaled by {LIMIT_PER_S:.0f}x):", "",
          "| variant | calls | calls/s | of limit | max calls in any 1 s | vs baseline |", "|---|---|---|---|---|---|"]  # fmt: skip
    for h in harvest:
        md.append(f"| {h['variant']} | {h['calls']} | {h['calls_per_s']:.2f} | {h['of_limit'] * 100:.1f}% | "
                  f"{h['max_calls_in_1s']} | {h['calls_per_s'] / base:.2f}x |")  # fmt: skip
    md += ["", "URL-list parsing (generated on the fly into a FIFO; one process):", "",
           "| lines | entries | rejected | lines/s | peak RSS after parse | unique ids | peak RSS after dedupe |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in parsing:
        md.append(f"| {r['lines']:,} | {r['entries']:,} | {r['rejected']:,} | {r['lines_per_s']:,} | "
                  f"{r['rss_parse_mb']:.0f} MB | {r['unique']:,} | {r['rss_dedupe_mb']:.0f} MB |")  # fmt: skip
    text = "\n".join(md) + "\n"
    (out / "harvest.md").write_text(text)
    (out / "harvest.json").write_text(json.dumps({"harvest": harvest, "parsing": parsing}, indent=1))
    print(text)
    # the limiter spaces call starts exactly; at the server, arrival jitter of a millisecond or so remains
    ok = all(h["of_limit"] <= 1.005 and h["max_calls_in_1s"] <= LIMIT_PER_S + 1 for h in harvest)
    if not ok:
        raise SystemExit("the rate limit was exceeded")


if __name__ == "__main__":
    main()
