"""Benchmark the build engines: write-shards on a Dask LocalCluster of 2 workers against the process pool
of 2 workers, same index, same run, alternating, each as its own CLI process.

    python -m tests.bench.bench_dask --out bench-out/dask

Data: as bench_write_shards (realistic-size synth-fmow, indexed and clustered, replicated to
`--locations` locations). Wall time includes start-up: for Dask that is the LocalCluster (scheduler in
the client, 2 nanny-managed worker processes); the table also gives the rate with each variant's
start-up subtracted (time to the first finished shard is not separable from the CLI, so start-up is
measured as the same command on an index of 1 location). Outputs of both engines are compared byte
for byte. Peak RSS is sampled over the whole process tree (Dask workers are children of the client).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from tests.bench.bench_write_shards import make_data, measure, replicate, shard_stats, write_shards_cmd


def _same_outputs(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir() if p.is_file())
    if names != sorted(p.name for p in b.iterdir() if p.is_file()):
        return False
    return all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="work folder; the data is reused by later runs")
    p.add_argument(
        "--real-locations", type=int, default=30, help="realistic locations synthesised (default 30)"
    )
    p.add_argument("--locations", type=int, default=150, help="locations per run (default 150)")
    p.add_argument("--shard-bytes", default="4MB", help="shard size (default 4MB: tens of tasks)")
    p.add_argument("--repeats", type=int, default=2, help="runs per engine, alternating (default 2)")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)

    os.environ["GEO_SSL_PROGRESS"] = "0"
    work = Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    runs = work / "runs"
    subprocess.run(["rm", "-rf", str(runs)], check=True)
    t_data = time.perf_counter()
    real = make_data(work / "realistic", args.real_locations, True, args.workers)
    idx = replicate(real, work / f"index-{args.locations}", args.locations)
    one = replicate(real, work / "index-1", 1)
    print(f"data ready in {time.perf_counter() - t_data:.0f} s", flush=True)

    engines = {"process pool": [], "Dask LocalCluster": ["--executor", "dask"]}
    results: dict[str, list[dict]] = {name: [] for name in engines}
    startup: dict[str, float] = {}
    for name, flags in engines.items():
        out = runs / f"startup-{name.split()[0].lower()}"
        startup[name] = measure(write_shards_cmd(one, out, args.workers, args.shard_bytes, *flags))["wall_s"]
    for r in range(args.repeats):
        for name, flags in engines.items():
            out = runs / f"{name.split()[0].lower()}-{r}"
            m = measure(write_shards_cmd(idx, out, args.workers, args.shard_bytes, *flags))
            m.update(shard_stats(out), out=out)
            results[name].append(m)
            print(
                f"{name} run {r}: {m['wall_s']:.1f} s, {m['views']} views, {m['shards']} shards", flush=True
            )

    identical = all(
        _same_outputs(results["process pool"][0]["out"], m["out"]) for ms in results.values() for m in ms
    )
    load = os.getloadavg()
    pool_best = min(m["wall_s"] for m in results["process pool"])
    lines = [
        f"write-shards, {args.locations} locations, {results['process pool'][0]['views']} views, "
        f"{results['process pool'][0]['shards']} shards (tasks), {args.workers} workers each, best of "
        f"{args.repeats} alternating runs; load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}",
        "",
        "| engine | wall s best / median | images/s (best) | vs process pool, best / median | start-up s"
        " | images/s without start-up | CPU s (tree, median) | images per CPU-s | peak RSS (tree) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    pool_median = statistics.median(m["wall_s"] for m in results["process pool"])
    for name, ms in results.items():
        best = min(ms, key=lambda m: m["wall_s"])
        median = statistics.median(m["wall_s"] for m in ms)
        cpu = statistics.median(m["cpu_s"] for m in ms)  # user + system of the whole tree: robust to load
        views = best["views"]
        net = max(1e-9, best["wall_s"] - startup[name])
        lines.append(
            f"| {name} | {best['wall_s']:.1f} / {median:.1f} | {views / best['wall_s']:.1f}"
            f" | {pool_best / best['wall_s']:.2f}x / {pool_median / median:.2f}x | {startup[name]:.1f}"
            f" | {views / net:.1f} | {cpu:.1f} | {views / cpu:.1f} | {max(m['tree_peak_mb'] for m in ms):.0f} MB |"
        )
    lines += ["", f"Outputs byte-identical across engines and runs: {'yes' if identical else 'NO'}"]
    table = "\n".join(lines) + "\n"
    (work / "dask.md").write_text(table)
    (work / "dask.json").write_text(
        json.dumps(
            {
                k: [{kk: vv for kk, vv in m.items() if kk not in ("stdout", "out")} for m in v]
                for k, v in results.items()
            }
            | {"startup_s": startup},
            indent=1,
        )
    )
    print(table)
    if not identical:
        raise SystemExit("engines wrote different bytes")


if __name__ == "__main__":
    main()
