"""Benchmark the loader against a bucket with a network in front: the same shards from local disk and from
moto's S3 server behind a shaping proxy on loopback (tests/net_shaping.py: a first-byte delay per request,
a bandwidth cap per connection), in the same run, at several delays and worker counts.

    python -m tests.bench.bench_loader_latency --out bench-out/loader_latency \
        [--delays 0,20,50,100] [--workers 0,2,4] [--bandwidth 50MB] [--peers mds,litdata] [--quick]

Two loads per source: decode="defer" (the storage path: read, group, choose views, shuffle, batch JPEG
bytes; nothing decoded) and full MoCo-v2 pairs (decode, crop, augment; uint8 batches as geo-pretrain
reads them). The data is a write-shards build with its sample_index.parquet (as every build writes).
Every row is one epoch in a fresh process (tests/bench/peer_loaders.py) with an empty cache, so no loader
shares its interpreter with the S3 server and the proxy (threads of this process, on the same cores).
Each row: samples/s over the epoch and after the first batch (steady: what a long epoch runs at), the
ratio of the steady rate to geo-ssl's from local disk with the same load and workers, the time to the
first batch (loader built, listing and manifest read, first shard bytes, the shuffle buffer's first
fill), the requests and bytes through the proxy, the loader's read retries, and the peak PSS of the row's
process and its workers. The "+0 ms" rows include the proxy's own cost (it relays every answer through
Python), the delayed rows add the delay on top of it. Variants alternate; each figure is the best of
--repeats. --quick: a smoke of the whole path (small build, delays 0 and 50 ms, 0 and 2 workers, one
round), not figures to quote; the full matrix needs an idle machine.

Peer rows (--peers, default both; "none" to leave them out): the same shards converted to MosaicML
streaming's MDS and litdata's chunks (tests/bench/peer_formats.py), uploaded to the same bucket and read
through the same proxy, at the same delay, by each peer's own loader with geo-ssl's per-sample work
(tests/bench/peer_loaders.py: settings and why), in .venv-peers (the peers are not in the test venv);
also from the converted local folder. A peer row that sent no request through the proxy fails (it would
have read from elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.shards.options import parse_size
from tests.bench.bench_loader import _tree_pss
from tests.bench.bench_loader_storage import upload
from tests.bench.peer_loaders import GEO_SSL, PEERS
from tests.net_shaping import ShapingProxy
from tests.s3_support import bucket_fs, moto_server

BUCKET = "bench-latency"
_FULL = {"delays": "0,20,50,100", "workers": "0,2,4", "locations": 4800, "shard_bytes": "12MB",
         "image_size": 192, "crop": 224, "repeats": 2}  # fmt: skip
_QUICK = {"delays": "0,50", "workers": "0,2", "locations": 240, "shard_bytes": "1MB", "image_size": 128,
          "crop": 112, "repeats": 1}  # fmt: skip
LOADS = {
    "defer": dict(decode="defer"),
    "moco": dict(decode="cpu", augment=True, output="uint8"),
}


def build_folder(work: Path, locations: int, shard_bytes: str, image_size: int) -> tuple[Path, int]:
    """WORK/shards: a write-shards build (with its sample_index.parquet, as every build writes, so a loader
    worker can fetch just its part of a shard) of a small fMoW-like index, made on the first run and reused;
    returns the folder and the bytes of its shards."""
    from geo_ssl.pipeline.shards.options import ShardOptions
    from geo_ssl.pipeline.shards.write import write_shards
    from tests.index_factory import make_index

    data = work / "shards"
    if not (data / "manifest.parquet").exists():
        side = (
            image_size * 3 // 2,
            image_size * 5 // 4,
        )  # sources above the stored size: resized, as real ones
        tiny = make_index(work / "index", n_locations=locations, splits=("train",), views=(1, 5), size=side)
        opts = ShardOptions(layout="locations", resize=image_size, shard_bytes=shard_bytes, seed=0, workers=1)
        write_shards(str(tiny.index), str(data), options=opts)
    return data, sum(f.stat().st_size for f in data.glob("*.tar"))


REPO = Path(__file__).resolve().parents[2]
PEER_PYTHON = REPO / ".venv-peers" / "bin" / "python"
PEER_VENV_HINT = "make bench-peers (or: python3.11 -m venv .venv-peers && .venv-peers/bin/pip install -c constraints.txt -e . psutil mosaicml-streaming==0.13.0 litdata==0.2.76)"


def peer_python() -> Path | None:
    """.venv-peers's interpreter, or None (then one line says how to make it)."""
    if PEER_PYTHON.exists():
        return PEER_PYTHON
    print(
        f"peer rows left out: no {PEER_PYTHON.relative_to(REPO)}; make it with: {PEER_VENV_HINT}", flush=True
    )
    return None


def _peer_run(python: Path, args: list[str], timeout: float) -> dict:
    """A peer_formats / peer_loaders run in .venv-peers from the repository root: its JSON line, or
    {"error": ...} with the tail of its stderr (one failing peer row must not end the run)."""
    try:
        done = subprocess.run(
            [str(python), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
    if done.returncode or not lines:
        err = done.stderr.strip().splitlines() or [""]
        # the exception's own line (a traceback may end in a multi-line debug dump)
        said = next(
            (x for x in reversed(err) if re.match(r"\w[\w.]*(Error|Exception)\b|\S+: error: ", x)), err[-1]
        )
        return {"error": f"exit {done.returncode}: {said.strip()[:300]}"}
    return json.loads(lines[-1])


def peer_data(python: Path, data: Path, build: Path) -> dict:
    """BUILD/peers/{mds,litdata}: the shards converted once per build (peer_formats checks every
    location's bytes), reused after."""
    out = build / "peers"
    if all((out / p / "index.json").exists() for p in PEERS):
        return {p: out / p for p in PEERS}
    made = _peer_run(python, ["-m", "tests.bench.peer_formats", str(data), str(out)], timeout=900)
    if "error" in made:
        raise SystemExit(f"bench_loader_latency: error: {data}: converting for the peers: {made['error']}")
    return {p: out / p for p in PEERS}


def measure_peer(
    python: Path, peer: str, load: str, workers: int, source: str, cache: Path, batch_size: int, crop: int,
    proxy: ShapingProxy | None = None, shuffle_buffer: int = 100,
) -> dict:  # fmt: skip
    """One peer row: peer_loaders in a fresh process with an empty cache folder, what went through the
    proxy during it, the load average after it."""
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    before = (proxy.stats.total_requests, proxy.stats.bytes_sent) if proxy else (0, 0)
    cmd = [
        "-m", "tests.bench.peer_loaders", "--peer", peer, "--load", load, "--workers", str(workers),
        "--source", source, "--cache", str(cache), "--batch-size", str(batch_size), "--crop", str(crop),
        "--shuffle-buffer", str(shuffle_buffer),
    ]  # fmt: skip
    if proxy:
        cmd += ["--endpoint", proxy.url]
    m = _peer_run(python, cmd, timeout=600)
    shutil.rmtree(cache, ignore_errors=True)
    m["load_avg"] = os.getloadavg()[0]
    if proxy:
        m["requests"] = proxy.stats.total_requests - before[0]
        m["proxy_mb"] = (proxy.stats.bytes_sent - before[1]) / 1e6
        if "error" not in m and not m["requests"]:
            m["error"] = "no request went through the proxy: read from elsewhere"
    return m


def _numbers(text: str, kind: type) -> list:
    return [kind(x) for x in text.split(",") if x.strip()]


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--delays", help=f"first-byte delays in ms (default {_FULL['delays']})")
    p.add_argument("--workers", help=f"loader worker counts (default {_FULL['workers']})")
    p.add_argument("--bandwidth", default="50MB", help="cap per connection, bytes/s (50MB, 1GiB; 0: none)")
    p.add_argument("--loads", default=",".join(LOADS), help="defer, moco or both")
    p.add_argument("--locations", type=int)
    p.add_argument("--shard-bytes", help="target shard size of the build (12MB; real fMoW builds: 256MB)")
    p.add_argument("--image-size", type=int, help="shorter side of the stored views")
    p.add_argument("--crop", type=int, help="MoCo-v2 crop size")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shuffle-buffer", type=int, default=100)
    p.add_argument("--repeats", type=int)
    p.add_argument("--peers", default=",".join(PEERS), help="mds, litdata, both, or none")
    p.add_argument("--quick", action="store_true", help="a smoke run of the path, not figures to quote")
    args = p.parse_args(argv)
    for k, v in (_QUICK if args.quick else _FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    try:
        args.delays, args.workers = _numbers(args.delays, float), _numbers(args.workers, int)
    except ValueError:
        p.error(f"--delays {args.delays} / --workers {args.workers}: comma-separated numbers, e.g. 0,20,50")
    args.loads = [x for x in args.loads.split(",") if x]
    args.peers = [x for x in args.peers.split(",") if x and x != "none"]
    if unknown := set(args.peers) - set(PEERS):
        p.error(f"--peers: unknown {', '.join(sorted(unknown))} (choose from {', '.join(PEERS)} or none)")
    if unknown := set(args.loads) - set(LOADS):
        p.error(f"--loads: unknown {', '.join(sorted(unknown))} (choose from {', '.join(LOADS)})")
    try:
        args.bandwidth = parse_size(args.bandwidth)
    except GeoSSLError as exc:
        p.error(f"--bandwidth: {exc}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    os.environ.setdefault("GEO_SSL_PROGRESS", "0")
    work = Path(args.out).resolve()
    # one build per size: a --quick run's shards are never taken for the full run's
    build = work / f"build-{args.locations}-{args.shard_bytes}-{args.image_size}"
    data, shard_bytes = build_folder(build, args.locations, args.shard_bytes, args.image_size)
    args.shards = len(list(data.glob("train-*.tar")))
    python = peer_python() if args.peers else None
    peer_dirs = peer_data(python, data, build) if python else {}
    load_start = os.getloadavg()
    rows: list[dict] = []

    def add(m: dict, **row) -> None:
        rows.append({**row, **m})
        _say(rows[-1])

    with moto_server(BUCKET) as moto_url, ShapingProxy(moto_url, bandwidth=args.bandwidth) as proxy:
        upload(moto_url, data, f"{BUCKET}/shards")  # straight to the server: setup, not measured
        for peer, folder in peer_dirs.items():  # subfolders too (MDS keeps one per shard)
            bucket_fs(moto_url).put(str(folder), f"{BUCKET}/peers/{peer}", recursive=True)

        def row(peer: str, load: str, workers: int, r: int, delay: float | None) -> None:
            folder = data if peer == GEO_SSL else peer_dirs[peer]
            remote = f"s3://{BUCKET}/{'shards' if peer == GEO_SSL else 'peers/' + peer}"
            if delay is not None:
                proxy.delay_ms = delay
            m = measure_peer(
                Path(sys.executable) if peer == GEO_SSL else python, peer, load, workers,
                str(folder) if delay is None else remote, work / "peer-cache", args.batch_size, args.crop,
                None if delay is None else proxy, args.shuffle_buffer,
            )  # fmt: skip
            source = "local disk" if delay is None else f"S3 +{delay:g} ms"
            add(m, load=load, workers=workers, source=source, peer=peer, round=r, delay_ms=delay)

        loaders = [GEO_SSL, *peer_dirs]
        measure_peer(Path(sys.executable), GEO_SSL, "defer", 0, str(data), work / "peer-cache", args.batch_size,
                     args.crop)  # fmt: skip  # warm the page cache, not a row
        base_pss = _tree_pss() / 2**20
        t_start = time.perf_counter()
        for r in range(args.repeats):
            for load in args.loads:
                for workers in args.workers:
                    for delay in [None, *args.delays]:
                        for peer in loaders:
                            row(peer, load, workers, r, delay)
    args.base_pss_mb, args.minutes = base_pss, (time.perf_counter() - t_start) / 60
    text = report(args, rows, shard_bytes, load_start, os.getloadavg())
    work.mkdir(parents=True, exist_ok=True)
    (work / "latency.md").write_text(text)
    (work / "latency.json").write_text(json.dumps({"args": vars(args), "runs": rows}, indent=1))
    print(text)


def _say(row: dict) -> None:
    what = f"{row['load']} {row['workers']} workers {row['source']} {row['peer']} round {row['round']}"
    if "error" in row:
        print(f"{what}: FAILED: {row['error']}", flush=True)
    else:
        print(
            f"{what}: {row['rate']:.0f} samples/s over the epoch, {row['steady_rate']:.0f} after the first "
            f"batch, first batch {row['first_batch_s']:.2f} s",
            flush=True,
        )


def _order(item: tuple) -> tuple:
    (load, workers, source, peer), _ = item
    delay = -1.0 if source == "local disk" else float(source.split("+")[1].split()[0])
    return (load, workers, delay, (GEO_SSL, *PEERS).index(peer))


def report(args: argparse.Namespace, rows: list[dict], shard_bytes: int, start: tuple, end: tuple) -> str:
    """The markdown table: best round per (load, workers, source, peer), each against geo-ssl's best from
    local disk with the same load and workers; a row that failed in every round says so."""
    best: dict[tuple, dict] = {}
    for row in rows:
        key = (row["load"], row["workers"], row["source"], row["peer"])
        if key not in best or row.get("steady_rate", -1) > best[key].get("steady_rate", -1):
            best[key] = row
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cap = f"{args.bandwidth / 1e6:g} MB/s per connection" if args.bandwidth else "no bandwidth cap"
    peers = f"; peers: {', '.join(args.peers)} (tests/bench/peer_loaders.py)" if args.peers else ""
    lines = [
        f"Loader from a shaped network (moto S3 on loopback behind a proxy: first-byte delay per request, "
        f"{cap}) against local disk in the same run: {args.locations} locations in {args.shards} shards "
        f"(a write-shards build with its sample_index.parquet), {shard_bytes / 1e6:.1f} MB, stored views of "
        f"shorter side {args.image_size}, MoCo-v2 crop {args.crop}, batch {args.batch_size}, geo-ssl's "
        f"shuffle buffer {args.shuffle_buffer}{peers}; best of {args.repeats}, alternating"
        f"{' (--quick: a smoke, not figures)' if args.quick else ''}; {args.minutes:.1f} min. Machine: "
        f"{os.cpu_count()} cores, load average {start[0]:.1f} at start, {end[0]:.1f} at the end. Every row is "
        f"one epoch in a fresh process (tests/bench/peer_loaders.py) with an empty cache; the S3 server and "
        f"the proxy are threads of the benchmark process ({args.base_pss_mb:.0f} MiB, peak RSS "
        f"{self_mb:.0f} MB) on the same cores. epoch/s: samples over the epoch from the loader built; "
        f"steady/s: after the first batch (what a long epoch runs at; its start-up is the first batch); "
        f"vs local: steady/s against geo-ssl from local disk, same load and workers; peak PSS: the row's "
        f"process and its loader workers.",
        "",
        "| load | workers | source | loader | epoch/s | steady/s | vs local | first batch s | requests "
        "| MB via proxy | retries | peak PSS MiB | load avg |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (load, workers, source, peer), m in sorted(best.items(), key=_order):
        head = f"| {load} | {workers} | {source} | {peer} |"
        if "error" in m:
            lines.append(f"{head} failed: {m['error'][:120]} | | | | | | | | {m['load_avg']:.1f} |")
            continue
        local = best.get((load, workers, "local disk", GEO_SSL), {}).get("steady_rate") or float("nan")
        via = f"{m['requests']} | {m['proxy_mb']:.1f}" if "requests" in m else "- | -"
        lines.append(
            f"{head} {m['rate']:.0f} | {m['steady_rate']:.0f} | {m['steady_rate'] / local:.2f}x "
            f"| {m['first_batch_s']:.2f} | {via} | {m.get('retries', '-')} | {m['peak_pss_mb']:.0f} "
            f"| {m['load_avg']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
