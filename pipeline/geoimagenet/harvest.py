"""`geo-build-dataset harvest-flickr`: Flickr coordinates for every photo of an ImageNet URL list.

URL list -> entries (photo_id, wnid, index) -> unique photos -> [YFCC100M join] -> getLocation calls
through flickrapi, a few threads in flight under one calls-per-hour limit, retries with backoff and
jitter for transient failures, photo-level answers kept and never asked again, key-level errors
stopping the run. Results go to Parquet part files in batches; a rerun after `kill -9` reads them back
and only asks what is left. At the end every part is merged into OUT/flickr_geo.parquet.
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.logs import STDOUT, get_logger
from geo_ssl.pipeline.common.outlock import output_lock
from geo_ssl.pipeline.common.progress import Summary, progress_bar
from geo_ssl.pipeline.common.retry import fail_if_unreachable, retry_io
from geo_ssl.pipeline.common.tables import write_table
from geo_ssl.pipeline.geoimagenet import flickr_client
from geo_ssl.pipeline.geoimagenet.credentials import Credentials, load_credentials
from geo_ssl.pipeline.geoimagenet.ratelimit import RateLimiter
from geo_ssl.pipeline.geoimagenet.store import ResultStore
from geo_ssl.pipeline.geoimagenet.urls import parse_url_list
from geo_ssl.pipeline.geoimagenet.yfcc import join_yfcc

log = get_logger(__name__)
STAGE = "harvest-flickr"
ENTRIES = "entries.parquet"
URL_REJECTS = "url_rejects.parquet"
URL_SUMMARY = "url_summary.json"
YFCC_DONE = "yfcc_join.json"
SUMMARY = "harvest_summary.json"
ANSWER_STATUSES = ("ok", "no_location", "not_found", "permission_denied", "bad_location")


@dataclass
class HarvestOptions:
    """Knobs of one harvest; defaults are the real service's (3,600 calls per hour per key)."""

    api_url: str = flickr_client.DEFAULT_API_URL
    rate_limit: float = 3600.0  # calls per hour, retries included
    concurrency: int = 4  # calls in flight
    batch: int = 500  # rows per Parquet part
    flush_seconds: float = 60.0  # also flush a part this often
    max_attempts: int = 6  # HTTP calls per photo before it is left to the rerun
    retry_base: float = 2.0  # seconds; backoff is uniform(0, min(cap, base * 2**n)) ("full jitter")
    retry_cap: float = 120.0
    timeout: float = 30.0  # per HTTP call
    max_consecutive_failures: int = 20  # photos in a row that exhausted their retries: the API is down

    def check(self) -> None:
        """One line naming the flag for a value the run cannot use (inf or nan included: argparse's float
        takes them, and an infinite limit or a zero timeout would only show up later, as a failing API)."""
        _finite("--rate-limit", self.rate_limit, "calls per hour")
        _finite("--timeout", self.timeout, "seconds")
        _finite("--flush-seconds", self.flush_seconds, "seconds")
        _finite("--retry-base", self.retry_base, "seconds", zero_ok=True)
        _finite("retry_cap", self.retry_cap, "seconds", zero_ok=True)
        if self.concurrency < 1:
            raise GeoSSLError(f"--concurrency must be >= 1 (got {self.concurrency})")
        if self.batch < 1 or self.max_attempts < 1:
            raise GeoSSLError("--batch and --max-attempts must be >= 1")
        if not self.api_url.startswith(("http://", "https://")):
            raise GeoSSLError(f"--api-url {self.api_url!r}: not an http(s) URL")


def _finite(flag: str, value: float, unit: str, zero_ok: bool = False) -> None:
    if not (math.isfinite(value) and (value >= 0 if zero_ok else value > 0)):
        bound = ">= 0" if zero_ok else "> 0"
        raise GeoSSLError(f"{flag}: must be a finite number {bound} ({unit}), got {value}")


def _file_id(url: str) -> dict:
    fs, path = fsio.get_fs(url)
    if not fs.exists(path):
        raise GeoSSLError(f"{url}: file not found")
    info = fs.info(path)
    return {"path": str(url), "size": int(info.get("size") or 0), "mtime": str(info.get("mtime", ""))}


def prepare_entries(urls: str, out: str) -> dict:
    """Parse the URL list once (skipped when OUT already holds the parse of the same file)."""
    ident = _file_id(urls)
    summary_url = fsio.join(out, URL_SUMMARY)
    if fsio.exists(summary_url) and fsio.exists(fsio.join(out, ENTRIES)):
        old = json.loads(fsio.read_bytes(summary_url))
        if old.get("source") == ident:
            return old
    res = parse_url_list(urls, fsio.join(out, ENTRIES), stage=STAGE)
    rejects = res.pop("rejects")
    cols = ["stage", "path", "reason", "detail", "split", "location_key"]
    write_table(pa.table({c: [r[c] for r in rejects] for c in cols}), fsio.join(out, URL_REJECTS), "rejects")
    res["source"] = ident
    fsio.atomic_write_text(summary_url, json.dumps(res, indent=1, sort_keys=True))
    return res


def read_entries(out: str, columns: list[str] | None = None) -> pa.Table:
    """OUT/entries.parquet (photo_id, wnid, index) of a harvest folder, local or on object storage.

    Read through fsspec, not pyarrow's own S3 client, so the command's storage options (endpoint, profile)
    apply; transient errors are retried, then raise retry.StorageError."""
    url = fsio.join(out, ENTRIES)
    fs, path = fsio.get_fs(url)

    def read() -> pa.Table:
        with fs.open(path, "rb") as f:
            return pq.read_table(f, columns=columns, use_threads=False, pre_buffer=False)

    return retry_io(read, f"reading {url}")


def photo_table(out: str) -> pa.Table:
    """Unique photos of the entries: photo_id (sorted) and the first wnid (alphabetically) it backs."""
    entries = read_entries(out, ["photo_id", "wnid"])
    table = entries.group_by("photo_id").aggregate([("wnid", "min")]).rename_columns(["photo_id", "wnid"])
    return table.sort_by([("photo_id", "ascending")])


def url_line(res: dict) -> str:
    ok = res["lines"] == res["blank_lines"] + res["entries"] + res["rejected"]
    text = (
        f"urls: {res['lines']} lines in = {res['entries']} Flickr entries + {res['rejected']} rejected"
        f" + {res['blank_lines']} blank [{'ok' if ok else 'MISMATCH'}]"
    )
    if res["reasons"]:
        text += " | rejects: " + ", ".join(f"{k}={v}" for k, v in sorted(res["reasons"].items()))
    return text


def _now() -> datetime:
    return datetime.now(UTC)


def _row(pid: int, wnid: str, status: str, source: str, attempts: int, values: dict | None = None,
         code: int | None = None, message: str | None = None) -> dict:  # fmt: skip
    row = {"photo_id": int(pid), "wnid": wnid, "status": status, "source": source, "attempts": attempts,
           "error_code": code, "error_message": message or None, "answered_at": _now()}  # fmt: skip
    row.update(values or {})
    return row


class _Workers:
    """Threads that each own a flickrapi client and answer photos from a queue, under one rate limit."""

    def __init__(self, creds: Credentials, opts: HarvestOptions, seed: int | None = None) -> None:
        self.creds = creds
        self.opts = opts
        self.limiter = RateLimiter(opts.rate_limit)
        self.stop = threading.Event()
        self.todo: queue.Queue = queue.Queue(maxsize=opts.concurrency * 4)
        self.done: queue.Queue = queue.Queue(maxsize=opts.concurrency)
        self.rng = random.Random(seed)
        self.calls = 0
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._loop, name=f"harvest-{i}", daemon=True)
            for i in range(opts.concurrency)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _loop(self) -> None:
        client = flickr_client.make_client(self.creds, self.opts.api_url, self.opts.timeout)
        while not self.stop.is_set():
            try:
                item = self.todo.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is None:
                return
            try:
                result = self._one(client, *item)
            except Exception as exc:  # a bug must not hang the run; its text is scrubbed like any other
                result = ("fatal", item[0], f"internal error: {type(exc).__name__}: {self.creds.scrub(exc)}")
            self._hand_over(result)

    def _hand_over(self, result: tuple) -> None:
        """Queue a result for the writer; the queue is short, so answered-but-unsaved rows stay few."""
        while True:
            try:
                self.done.put(result, timeout=0.2)
                return
            except queue.Full:
                if self.stop.is_set():
                    return

    def _one(self, client, pid: int, wnid: str) -> tuple:
        attempts = 0
        last = None
        while True:
            if not self.limiter.acquire(self.stop):
                return ("aborted", pid, None)
            attempts += 1
            with self._lock:
                self.calls += 1
            ans = flickr_client.get_location(client, pid, self.creds)
            if ans.kind == "photo":
                return (
                    "row",
                    pid,
                    _row(pid, wnid, ans.status, "api", attempts, ans.values, ans.code, ans.message),
                )
            if ans.kind == "fatal":
                return ("fatal", pid, ans.message)
            last = ans
            if attempts >= self.opts.max_attempts:
                if ans.code == 105:
                    return (
                        "fatal",
                        pid,
                        f"Flickr says the service is unavailable ({attempts} tries: {ans.message})",
                    )
                return ("failed", pid, ans.message)
            backoff = self.rng.uniform(
                0, min(self.opts.retry_cap, self.opts.retry_base * 2 ** (attempts - 1))
            )
            if self.stop.wait(backoff):
                return ("aborted", pid, last.message)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=self.opts.timeout + 5)


class Terminated(Exception):
    """SIGTERM (timeout, Slurm, systemd) stopped the harvest after every answer received was saved; the
    CLI prints this on one line and exits 143, like a Ctrl-C exits 130."""

    def __init__(self) -> None:
        super().__init__(
            "stopped by SIGTERM; the answers received are saved, rerun the same command to resume"
        )


def _stop_exception(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def _raise_stop(signum: int, frame) -> None:
    raise _stop_exception(signum)


@contextlib.contextmanager
def _on_signals(handler, signums: tuple[int, ...]) -> Iterator[None]:
    """`handler` for `signums` while the block runs; off the main thread Python cannot, and this is a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def harvest_flickr(
    urls: str,
    out: str,
    options: HarvestOptions | None = None,
    credentials: str | None = None,
    yfcc: str | None = None,
    limit: int | None = None,
) -> Summary:
    """Harvest coordinates for the photos of URLS into OUT; resumable; returns the reconciling summary.

    limit: ask at most this many photos in this run (the rest stay for the next run).
    OUT is locked for the run (common/outlock.py): a second harvest into it stops with exit 2 instead of
    spending the key's quota twice and sweeping the other run's temp files. SIGTERM raises Terminated
    (after saving every answer received while calls are in flight).
    """
    opts = options or HarvestOptions()
    opts.check()
    creds = load_credentials(credentials)
    fsio.check_output_dir(out, "--out")
    with _on_signals(_raise_stop, (signal.SIGTERM,)), output_lock(out, STAGE):
        return _harvest(urls, out, opts, creds, yfcc, limit)


def _harvest(urls: str, out: str, opts: HarvestOptions, creds: Credentials, yfcc: str | None,
             limit: int | None) -> Summary:  # fmt: skip
    fsio.remove_stale_temps(out)
    res = prepare_entries(urls, out)
    log.info(url_line(res), extra=STDOUT)
    photos = photo_table(out)
    ids = photos.column("photo_id").to_numpy()
    wnids = photos.column("wnid")
    store = ResultStore(out)
    answered_before = store.answered_ids()

    saved_now, yfcc_unused = _yfcc_step(yfcc, out, store, ids, wnids, answered_before) if yfcc else (0, {})
    answered = store.answered_ids() if saved_now else answered_before
    todo_mask = ~np.isin(ids, answered, assume_unique=True)
    todo = np.flatnonzero(todo_mask)
    if limit is not None:
        todo = todo[: max(0, int(limit))]

    counts, failed, calls, elapsed = _call_api(creds, opts, store, ids, wnids, todo)
    table = store.merge()
    summary = _finish(creds.scrub, opts, res, table, ids, answered_before, counts, failed, calls, saved_now,
                      elapsed, yfcc)  # fmt: skip
    summary.extra["yfcc_lines_unused"] = yfcc_unused
    fsio.atomic_write_text(fsio.join(out, SUMMARY), json.dumps(summary.as_dict(), indent=1, sort_keys=True,
                                                               allow_nan=False))  # fmt: skip
    return summary


def _yfcc_step(yfcc: str, out: str, store: ResultStore, ids: np.ndarray, wnids,
               answered: np.ndarray) -> tuple[int, dict]:  # fmt: skip
    """Join against the YFCC dump once; rows go to the store like API answers (source=yfcc). Returns the
    rows saved now and the dump's unused lines by reason (from the marker when the join was done before)."""
    marker = fsio.join(out, YFCC_DONE)
    ident = _file_id(yfcc)
    if fsio.exists(marker):
        done = json.loads(fsio.read_bytes(marker))
        if done.get("source") == ident:
            return 0, done.get("unused_lines", {})
    wanted = ids[~np.isin(ids, answered, assume_unique=True)]
    rows, n = [], 0
    unused: Counter = Counter()
    for hit in join_yfcc(yfcc, wanted, unused=unused):
        pos = int(np.searchsorted(ids, hit["photo_id"]))
        rows.append(_row(hit["photo_id"], wnids[pos].as_py(), "ok", "yfcc", 0,
                         {"lat": hit["lat"], "lon": hit["lon"], "accuracy": hit["accuracy"]}))  # fmt: skip
        if len(rows) >= 50_000:
            store.append(rows)
            n += len(rows)
            rows = []
    store.append(rows)
    n += len(rows)
    unused_lines = dict(sorted(unused.items()))
    fsio.atomic_write_text(marker, json.dumps({"source": ident, "matched": n, "unused_lines": unused_lines},
                                              sort_keys=True))  # fmt: skip
    return n, unused_lines


def _call_api(creds, opts: HarvestOptions, store: ResultStore, ids, wnids, todo: np.ndarray):
    """Ask the API for the photos at `todo`; with none left (a finished harvest, or the YFCC join located
    them all) nothing is started and the API is not contacted, so a rerun completes while Flickr is down."""
    if len(todo) == 0:
        return Counter(), 0, 0, 0.0
    fail_if_unreachable(opts.api_url, "Flickr API", "--api-url")  # a dead address: one line, no retries
    counts: Counter = Counter()
    failed = 0
    fatal = None
    workers = _Workers(creds, opts)
    workers.start()
    bar = progress_bar(total=len(todo), desc=STAGE, unit="photo")
    buffer: list[dict] = []
    last_flush = t0 = time.monotonic()
    consecutive = 0
    feed_pos = 0
    outstanding = 0
    received: list[int] = []

    def defer(signum: int, frame) -> None:
        """Ctrl-C or SIGTERM is acted on by the loop at a safe point (an exception raised inside a queue
        call can leave the queue's lock held, and the drain that follows then waits forever); a second
        signal interrupts at once."""
        if received:
            raise _stop_exception(signum)
        received.append(signum)

    with _on_signals(defer, (signal.SIGINT, signal.SIGTERM)):
        try:
            while feed_pos < len(todo) or outstanding:
                if received:
                    raise _stop_exception(received[0])  # here, between queue calls, never inside one
                while feed_pos < len(todo) and not workers.stop.is_set():
                    i = int(todo[feed_pos])
                    try:
                        workers.todo.put_nowait((int(ids[i]), wnids[i].as_py()))
                    except queue.Full:
                        break
                    feed_pos += 1
                    outstanding += 1
                try:
                    kind, _pid, payload = workers.done.get(timeout=0.2)
                except queue.Empty:
                    kind = None
                if kind is not None:
                    outstanding -= 1
                    if kind == "row":
                        buffer.append(payload)
                        counts[payload["status"]] += 1
                        consecutive = 0
                    elif kind == "failed":
                        failed += 1
                        consecutive += 1
                        if consecutive >= opts.max_consecutive_failures:
                            fatal = f"the API at {opts.api_url} failed for {consecutive} photos in a row (last: {payload})"
                    elif kind == "fatal":
                        fatal = payload
                    bar.update(1 if kind in ("row", "failed") else 0)
                    dt = max(time.monotonic() - t0, 1e-9)
                    bar.set_postfix_str(f"{workers.calls / dt * 3600:,.0f} calls/h", refresh=False)
                if fatal is not None:
                    workers.stop.set()
                    break
                now = time.monotonic()
                if len(buffer) >= opts.batch or (buffer and now - last_flush >= opts.flush_seconds):
                    # swapped first: a signal during the write cannot save the batch twice
                    batch, buffer, last_flush = buffer, [], now
                    store.append(batch)
            store.append(_drain(workers, buffer, counts))
            buffer = []
        except (KeyboardInterrupt, Terminated):  # keep every answer received, then stop like the CLI expects
            store.append(_drain(workers, buffer, counts))
            raise
        finally:
            workers.close()
            bar.close()
    if fatal is not None:
        store.merge()
        raise GeoSSLError(
            f"{STAGE} stopped: {creds.scrub(fatal)}; answered photos are saved, rerun to resume"
        )
    return counts, failed, workers.calls, time.monotonic() - t0


def _drain(workers: _Workers, buffer: list[dict], counts: Counter) -> list[dict]:
    """Answers that finished while stopping join the buffer: they are kept and never asked again."""
    while True:
        try:
            kind, _pid, payload = workers.done.get_nowait()
        except queue.Empty:
            return buffer
        if kind == "row":
            buffer.append(payload)
            counts[payload["status"]] += 1


def _finish(scrub, opts, res, table: pa.Table, ids: np.ndarray, answered_before: np.ndarray, counts: Counter,
            failed: int, calls: int, saved_now: int, elapsed: float, yfcc: str | None) -> Summary:  # fmt: skip
    """Counts of this list's photos only: OUT may also hold the answers of another list harvested there
    before (kept, and never asked again, but neither written nor skipped for this list)."""
    mine = table.filter(pc.is_in(table.column("photo_id"), value_set=pa.array(ids, pa.int64())))
    status = mine.column("status")
    by_status = {s: int(pc.sum(pc.equal(status, s)).as_py() or 0) for s in ANSWER_STATUSES}
    yfcc_total = int(pc.sum(pc.equal(mine.column("source"), "yfcc")).as_py() or 0)
    summary = Summary(stage=STAGE, unit="photos", inputs=len(ids))
    summary.written = by_status["ok"]
    summary.rejected = sum(v for k, v in by_status.items() if k != "ok")
    summary.reasons.update({k: v for k, v in by_status.items() if k != "ok" and v})
    summary.skipped = len(ids) - mine.num_rows  # not answered yet: failed this run, or beyond --limit
    summary.extra = {
        "answered_total": mine.num_rows,
        "answered_this_run": int(sum(counts.values())) + saved_now,
        "answered_before": int(np.isin(answered_before, ids, assume_unique=True).sum()),
        "answers_of_other_lists": table.num_rows - mine.num_rows,
        "by_status": by_status,
        "from_yfcc": yfcc_total,
        "calls_saved_by_yfcc": yfcc_total,
        "calls_this_run": calls,
        "failed_this_run": failed,
        "calls_per_hour": round(calls / elapsed * 3600, 1) if elapsed > 0 else 0.0,
        "url_list": {k: res[k] for k in ("lines", "blank_lines", "entries", "rejected", "reasons")},
        "parameters": {
            "api_url": scrub(opts.api_url),
            "rate_limit": opts.rate_limit,
            "concurrency": opts.concurrency,
            "max_attempts": opts.max_attempts,
            "batch": opts.batch,
            "yfcc": yfcc,
        },
    }
    return summary


def status_line(summary: Summary) -> str:
    e = summary.extra
    by = " ".join(f"{k}={v}" for k, v in e["by_status"].items() if v or k == "ok") or "ok=0"
    return (
        f"  by status: {by} | left to a rerun: {summary.skipped} | calls this run: {e['calls_this_run']}"
        f" ({e['calls_per_hour']:,.0f}/h) | calls saved by the YFCC join: {e['calls_saved_by_yfcc']}"
    )
