"""Benchmark write-shards: images/s and peak RSS against a plain decode-resize-encode loop, same images.

    python -m tests.bench.bench_write_shards --out bench-out/write_shards

Data: `synth-fmow --realistic-sizes` (fMoW-like pixel sizes, long tail to a few thousand px), indexed
and clustered by the real stages. Synthesising is slow, so a few dozen real locations are synthesised
and the index is *replicated* (same image files, new location keys) up to the wanted location count:
decode work per view is unchanged, and every variant reads warm files, the baseline included.

Every variant runs as its own process (the real CLI for write-shards); wall time includes start-up
(imports, reading the index, planning). Peak RSS is sampled with psutil every 20 ms over the whole
process tree (main process plus pool workers) and also read from each process's VmHWM.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------------------
# the baseline: one process, whole image, shorter side to 448, JPEG out (no crop, no DCT scaling)


def baseline(list_file: str, resize: int = 448, quality: int = 90) -> None:
    import io

    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    n = 0
    for path in Path(list_file).read_text().split("\n"):
        if not path:
            continue
        with Image.open(path) as im:
            if im.mode != "RGB":
                im = im.convert("RGB")
            w, h = im.size
            s = resize / min(w, h)
            if s < 1:
                im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BICUBIC)
            im.save(io.BytesIO(), format="JPEG", quality=quality)
        n += 1
    print(json.dumps({"images": n}))


# ----------------------------------------------------------------------------------------------------------
# measuring


class PeakRSS:
    """Samples the summed RSS of a process and its descendants; keeps the peak and each process's VmHWM."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.tree_peak = 0
        self.hwm: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                    self.hwm[p.pid] = max(self.hwm.get(p.pid, 0), _vm_hwm(p.pid))
                except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError, ProcessLookupError):
                    pass
            self.tree_peak = max(self.tree_peak, total)
            time.sleep(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _vm_hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def measure(cmd: list[str]) -> dict:
    env = {**os.environ, "GEO_SSL_PROGRESS": "0", "PYTHONPATH": str(REPO)}
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rss = PeakRSS(proc.pid)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0  # user + system of the whole tree: pool workers are waited for too
    rss.stop()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark step failed ({' '.join(cmd)}):\n{stderr}")
    main_hwm = rss.hwm.get(proc.pid, 0)
    workers = [v for k, v in rss.hwm.items() if k != proc.pid]
    return {
        "wall_s": wall, "cpu_s": cpu, "tree_peak_mb": rss.tree_peak / 1e6, "main_hwm_mb": main_hwm / 1e6,
        "worker_hwm_mb": max(workers) / 1e6 if workers else 0.0, "stdout": stdout,
    }  # fmt: skip


def write_shards_cmd(index: Path, out: Path, workers: int, shard_bytes: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "geo_ssl.pipeline.cli", "write-shards", "--index", str(index), "--out", str(out),
        "--workers", str(workers), "--shard-bytes", shard_bytes, *extra,
    ]  # fmt: skip


def shard_stats(out: Path) -> dict:
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    scales: dict[str, int] = {}
    for rec in (out / "_done").glob("*.json"):
        for k, v in json.loads(rec.read_text())["dct_scales"].items():
            scales[k] = scales.get(k, 0) + v
    return {"views": sum(r["views"] for r in rows), "shards": len(rows), "bytes": sum(r["bytes"] for r in rows),
            "dct_scales": scales}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# data


def make_data(root: Path, locations: int, realistic: bool, workers: int) -> Path:
    """synth-fmow -> index-fmow -> cluster; resumable, so a second bench run reuses the data."""
    from geo_ssl.pipeline.cluster import cluster
    from geo_ssl.pipeline.fmow.index import index_fmow
    from geo_ssl.pipeline.fmow.synth import synth_fmow

    index = root / "index"
    if not (index / "clusters.parquet").exists():
        synth_fmow(
            str(root / "fmow"), locations=locations, seed=0, realistic_sizes=realistic, workers=workers
        )
        index_fmow(str(root / "fmow"), str(index), workers=workers)
        cluster(str(index), k=min(10, max(1, locations // 5)), seed=0)
    return index


def replicate(index: Path, out: Path, locations: int) -> Path:
    """An index of `locations` locations reusing `index`'s images (new keys: loc number + copy * 10^6)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from geo_ssl.pipeline.common.tables import read_table, write_table
    from geo_ssl.pipeline.fmow.layout import location_key

    if (out / "clusters.parquet").exists():
        return out
    images = read_table(str(index / "images.parquet"), "image_index")
    clusters = read_table(str(index / "clusters.parquet"), "clusters")
    keys = clusters["location_key"].to_pylist()
    img_parts, cl_parts = [], []
    for start in range(0, locations, len(keys)):
        copy = start // len(keys)
        take = keys[: min(len(keys), locations - start)]

        def renamed(table: pa.Table, copy: int = copy, take: list[str] = take) -> pa.Table:
            table = table.filter(pc.is_in(table["location_key"], value_set=pa.array(take)))
            cols = table.to_pydict()
            for i, (split, key) in enumerate(zip(cols["split"], cols["location_key"], strict=True)):
                category, loc = key.split("-", 1)[1].rsplit("_", 1)
                new_id = f"{category}_{int(loc) + copy * 1_000_000}"
                cols["location_key"][i] = location_key(split, new_id)
                if "location_id" in cols:
                    cols["location_id"][i] = new_id
            return pa.Table.from_pydict(cols, schema=table.schema)

        img_parts.append(renamed(images))
        cl_parts.append(renamed(clusters))
    out.mkdir(parents=True, exist_ok=True)
    write_table(pa.concat_tables(img_parts), str(out / "images.parquet"), "image_index")
    write_table(pa.concat_tables(cl_parts), str(out / "clusters.parquet"), "clusters")
    return out


def image_list(index: Path, dest: Path) -> Path:
    import pyarrow.parquet as pq

    paths = pq.read_table(index / "images.parquet", columns=["image_path"])["image_path"].to_pylist()
    dest.write_text("\n".join(paths) + "\n")
    return dest


# ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="work folder; the data is reused by later runs")
    p.add_argument(
        "--real-locations", type=int, default=60, help="realistic locations synthesised (default 60)"
    )
    p.add_argument("--locations", type=int, default=250, help="locations per throughput run (default 250)")
    p.add_argument("--small-locations", type=int, default=100, help="small-image locations synthesised")
    p.add_argument("--rss-locations", default="1000,10000", help="location counts compared for peak RSS")
    p.add_argument(
        "--shard-bytes", default="8MB", help="shard size for the runs (default 8MB: several shards)"
    )
    p.add_argument("--max-workers", type=int, default=2)
    p.add_argument("--baseline", default=None, help=argparse.SUPPRESS)  # internal: run the baseline loop
    args = p.parse_args(argv)
    if args.baseline:
        baseline(args.baseline)
        return

    os.environ["GEO_SSL_PROGRESS"] = "0"
    work = Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    runs = work / "runs"
    subprocess.run(["rm", "-rf", str(runs)], check=True)
    t_data = time.perf_counter()
    real = make_data(work / "realistic", args.real_locations, True, args.max_workers)
    small = make_data(work / "small", args.small_locations, False, args.max_workers)
    idx = replicate(real, work / f"index-real-{args.locations}", args.locations)
    print(f"data ready in {time.perf_counter() - t_data:.0f} s", flush=True)

    rows: list[dict] = []

    def run(name: str, cmd: list[str], out: Path | None) -> dict:
        m = measure(cmd)
        stats = shard_stats(out) if out else {"views": json.loads(m["stdout"])["images"], "dct_scales": {}}
        row = {"variant": name, **stats, **{k: v for k, v in m.items() if k != "stdout"}}
        row["images_s"] = row["views"] / row["wall_s"]
        # fixed cost: the same command again, every shard skipped (start-up, index, plan, pool, verify)
        row["fixed_s"] = measure(cmd)["wall_s"] if out else 0.0
        net = row["wall_s"] - row["fixed_s"]
        row["net_images_s"] = (
            row["views"] / net if net > 0.2 * row["wall_s"] else float("nan")
        )  # nan: too short
        rows.append(row)
        print(f"{name}: {row['views']} images in {row['wall_s']:.1f} s = {row['images_s']:.1f}/s, "
              f"peak RSS {row['tree_peak_mb']:.0f} MB", flush=True)  # fmt: skip
        return row

    n = args.locations
    base = run(f"baseline: full decode, resize 448, encode (1 proc, {n} loc)",
               [sys.executable, "-m", "tests.bench.bench_write_shards", "--out", str(work),
                "--baseline", str(image_list(idx, work / "images.txt"))], None)  # fmt: skip
    sb = args.shard_bytes
    auto1 = run(f"write-shards context=auto, DCT on, 1 worker ({n} loc)",
                write_shards_cmd(idx, runs / "auto-dct-1", 1, sb), runs / "auto-dct-1")  # fmt: skip
    run(f"write-shards context=auto, DCT off, 1 worker ({n} loc)",
        write_shards_cmd(idx, runs / "auto-nodct-1", 1, sb, "--no-dct"), runs / "auto-nodct-1")  # fmt: skip
    run(f"write-shards context=none, DCT on, 1 worker ({n} loc)",
        write_shards_cmd(idx, runs / "none-dct-1", 1, sb, "--context", "none"), runs / "none-dct-1")  # fmt: skip
    run(f"write-shards context=none, DCT off, 1 worker ({n} loc)",
        write_shards_cmd(idx, runs / "none-nodct-1", 1, sb, "--context", "none", "--no-dct"),
        runs / "none-nodct-1")  # fmt: skip
    for w in range(2, args.max_workers + 1):
        run(f"write-shards context=auto, DCT on, {w} workers ({n} loc)",
            write_shards_cmd(idx, runs / f"auto-dct-{w}", w, sb), runs / f"auto-dct-{w}")  # fmt: skip
    for count in (int(c) for c in args.rss_locations.split(",")):
        sidx = replicate(small, work / f"index-small-{count}", count)
        run(f"write-shards small images, {args.max_workers} workers ({count} loc)",
            write_shards_cmd(sidx, runs / f"small-{count}", args.max_workers, "4MB"), runs / f"small-{count}")  # fmt: skip

    load = os.getloadavg()
    table = render(rows, base, auto1, load)
    print("\n" + table)
    (work / "bench_write_shards.md").write_text(table)
    (work / "bench_write_shards.json").write_text(json.dumps(rows, indent=1, sort_keys=True))


def render(rows: list[dict], base: dict, auto1: dict, load: tuple[float, float, float]) -> str:
    lines = [
        "| variant | images | wall s | images/s | vs baseline | fixed s | net images/s | CPU s | images/CPU-s "
        "| DCT scales (views) | shards | peak RSS tree MB | main MB | max worker MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        scales = ", ".join(
            f"1/{k}: {v}" for k, v in sorted(r["dct_scales"].items(), key=lambda kv: int(kv[0]))
        )
        ratio = f"{r['images_s'] / base['images_s']:.2f}x" if r["views"] == base["views"] else "-"
        lines.append(
            f"| {r['variant']} | {r['views']} | {r['wall_s']:.1f} | {r['images_s']:.1f} | {ratio} | "
            f"{r['fixed_s']:.1f} | {r['net_images_s']:.1f} | {r['cpu_s']:.1f} | {r['views'] / r['cpu_s']:.1f} | "
            f"{scales or '-'} | {r.get('shards', '-')} | {r['tree_peak_mb']:.0f} | {r['main_hwm_mb']:.0f} | "
            f"{r['worker_hwm_mb']:.0f} |"
        )
    by_name = {r["variant"].split(" (")[0]: r for r in rows}
    lines += [
        "",
        f"- write-shards (auto context, DCT, 1 worker) / baseline: {auto1['images_s'] / base['images_s']:.2f}x",
    ]
    name = "write-shards context={}, DCT {}, 1 worker"
    dct = [
        (c, by_name.get(name.format(c, "on")), by_name.get(name.format(c, "off"))) for c in ("auto", "none")
    ]
    lines += [
        f"- DCT on / off, context={c}: {on['images_s'] / off['images_s']:.2f}x in images/s, "
        f"{off['cpu_s'] / on['cpu_s']:.2f}x in images/CPU-s"
        for c, on, off in dct
        if on and off
    ]
    scaled = [
        r
        for r in rows
        if r["variant"].startswith("write-shards context=auto, DCT on,") and "workers" in r["variant"]
    ]
    lines += [
        f"- {r['variant'].split(', ')[-1].split(' (')[0]} / 1 worker: {r['images_s'] / auto1['images_s']:.2f}x"
        for r in scaled
    ]
    small = [r for r in rows if r["variant"].startswith("write-shards small images")]
    if len(small) >= 2:
        lines.append(
            f"- peak RSS (tree) {small[0]['variant'].split('(')[1][:-1]}: {small[0]['tree_peak_mb']:.0f} MB, "
            f"{small[-1]['variant'].split('(')[1][:-1]}: {small[-1]['tree_peak_mb']:.0f} MB "
            f"(x{small[-1]['tree_peak_mb'] / small[0]['tree_peak_mb']:.2f}); largest worker "
            f"{small[0]['worker_hwm_mb']:.0f} vs {small[-1]['worker_hwm_mb']:.0f} MB"
        )
    lines += [
        f"- {os.cpu_count()} CPUs, load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min); "
        "wall time includes process start-up, reading the index and planning; `fixed s` is a rerun of the same "
        "command with every shard skipped (it also re-hashes the shards), `net images/s` excludes it.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
