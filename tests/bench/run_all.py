"""`make bench`: every benchmark in sequence (never in parallel: they share the cores they measure).

Each writes its markdown table under OUT/<name>/; this prints them together for BENCHMARKS.md.
The ablation is separate (`make ablation`): it trains five models and takes longer.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCHES = {
    "write_shards": "tests.bench.bench_write_shards",
    "loader": "tests.bench.bench_loader",
    "loader_storage": "tests.bench.bench_loader_storage",  # local disk vs S3 (moto) vs the shard cache
    "loader_latency": "tests.bench.bench_loader_latency",  # local disk vs S3 behind delay + bandwidth cap
    "gpu": "tests.bench.bench_gpu",  # GPU data path; without CUDA it says so and runs a CPU smoke
    "trainer": "tests.bench.bench_trainer",
    "harvest": "tests.bench.bench_harvest",
    "dask": "tests.bench.bench_dask",
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="bench-out")
    p.add_argument("--only", default=None, help="comma-separated subset of: " + ", ".join(BENCHES))
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHES)
    failed = []
    for name in names:
        out = Path(args.out) / name
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        print(f"== {name}: python -m {BENCHES[name]} --out {out}", flush=True)
        if subprocess.run([sys.executable, "-m", BENCHES[name], "--out", str(out)]).returncode != 0:
            failed.append(name)
        print(f"== {name}: {time.time() - t0:.0f} s", flush=True)
    for md in sorted(Path(args.out).glob("*/*.md")):
        print(f"\n### {md}\n\n{md.read_text()}")
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
