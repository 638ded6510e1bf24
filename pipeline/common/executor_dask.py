"""The Dask engine of `executor`: a LocalCluster on this machine, or an existing cluster's scheduler.

Imported only when `--executor dask` is chosen, so Dask stays an optional extra. One client per
process is kept and reused by every stage of a run (a `build` indexes and writes shards on the same
cluster) and closed at exit. Tasks are submitted a few per worker at a time and their results come
back through `as_completed`, which feeds the stage's progress bar. A task whose worker dies is rerun
by the scheduler on another worker (up to `distributed.scheduler.allowed-failures` times); tasks
write their outputs with temp + rename and completion records, so a rerun task rewrites the same
bytes under the same name and nothing is written twice.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from geo_ssl.pipeline.common.errors import GeoSSLError

try:
    import dask
    from distributed import Client, LocalCluster, WorkerPlugin, as_completed
    from distributed.scheduler import KilledWorker
except ImportError:  # pragma: no cover - exercised only without the extra
    raise GeoSSLError(
        "--executor dask needs Dask's distributed scheduler: pip install 'geo-ssl[dask]'"
    ) from None

from geo_ssl.pipeline.common.executor import exit_with_run

T = TypeVar("T")
R = TypeVar("R")

#: scheduler address (None: this process's LocalCluster) -> client, reused across stages of one process.
_clients: dict[str | None, Client] = {}


class ExitWithRun(WorkerPlugin):
    """Ties the workers of a LocalCluster to the process that started it (see executor.exit_with_run)."""

    name = "geo-ssl-exit-with-run"

    def __init__(self, run_pid: int) -> None:
        self.run_pid = run_pid

    def setup(self, worker) -> None:
        exit_with_run(self.run_pid)


def client_for(scheduler: str | None, workers: int) -> Client:
    """The cluster's client: connect to `scheduler`, or start a LocalCluster of `workers` processes.

    A LocalCluster at least as large as asked is reused (a build's stages share one); a smaller one is
    replaced."""
    client = _clients.get(scheduler)
    if client is not None and client.status == "running":
        if scheduler or len(client.cluster.workers) >= workers:
            return client
        _close(_clients.pop(scheduler))
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise GeoSSLError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
    else:
        # No dashboard, so no statistical profiler either: it samples every worker's stack every 10 ms.
        with dask.config.set({"distributed.worker.profile.enabled": False}):
            cluster = LocalCluster(
                n_workers=max(1, workers),
                threads_per_worker=1,  # tasks hold the GIL (Pillow, JSON): one process per task in flight
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
        client = Client(cluster, set_as_default=False)
        client.register_plugin(ExitWithRun(os.getpid()))
    _clients[scheduler] = client
    return client


def shutdown() -> None:
    """Close every client (and the LocalClusters this process started)."""
    while _clients:
        _close(_clients.popitem()[1])


def _close(client: Client) -> None:
    cluster = client.cluster
    try:
        client.close()
        if cluster is not None:
            cluster.close()
    except Exception:  # closing at exit must never mask the run's own outcome
        pass


atexit.register(shutdown)


def worker_pids() -> list[int]:
    """Pids of this process's LocalCluster workers (tests use it)."""
    client = _clients.get(None)
    if client is None:
        return []
    return sorted(client.run(os.getpid).values())


def run_tasks(
    fn: Callable[[T], R],
    tasks: Iterable[T],
    workers: int,
    *,
    stage: str,
    in_flight: int = 2,
    scheduler: str | None = None,
) -> Iterator[R]:
    """Yield `fn(task)` for every task, in completion order, from the Dask cluster."""
    queue = iter(tasks)
    first = next(queue, _END)
    if first is _END:  # nothing to do (a resumed run): no cluster to start
        return
    queue = itertools.chain([first], queue)
    client = client_for(scheduler, workers)
    slots = max(1, sum(client.nthreads().values()) if scheduler else workers)
    window = max(1, in_flight) * slots
    pending: set = set()
    done_all = False

    def submit(task: T) -> None:
        future = client.submit(fn, task, pure=False)
        pending.add(future)
        results.add(future)

    results = as_completed(loop=client.loop)
    try:
        for task in queue:
            submit(task)
            if len(pending) >= window:
                break
        for future in results:
            pending.discard(future)
            try:
                value = future.result()
            except KilledWorker as exc:
                raise GeoSSLError(
                    f"a {stage} task kept killing its Dask worker ({exc}); rerun the same command to resume"
                ) from None
            future.release()
            yield value
            task = next(queue, _END)
            if task is not _END:
                submit(task)
        done_all = True
    finally:
        if not done_all and pending:
            client.cancel(list(pending))


_END = object()
