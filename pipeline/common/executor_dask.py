"""The Dask engine of `executor`: a LocalCluster on this machine, or an existing cluster's scheduler.

Imported only when `--executor dask` is chosen, so Dask stays an optional extra. One client per
process is kept and reused by every stage of a run (a `build` indexes and writes shards on the same
cluster) and closed at exit. Tasks are submitted a few per worker at a time and their results come
back through `as_completed`, which feeds the stage's progress bar. A task whose worker dies is rerun
by the scheduler on another worker (up to `distributed.scheduler.allowed-failures` times); tasks
write their outputs with temp + rename and completion records, so a rerun task rewrites the same
bytes under the same name and nothing is written twice.

A `--scheduler` address is asked who it is before a Client connects, so that a web port (the dashboard's)
is a one-line error within seconds, not a hang. A scheduler lost mid-run ends the run with one line and
exit 3 (`retry.StorageError`, as a storage outage): finished tasks are recorded, a rerun resumes.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, ThreadPoolExecutor
from typing import TypeVar

from geo_ssl.pipeline.common.errors import GeoSSLError

try:
    import dask
    from distributed import Client, LocalCluster, WorkerPlugin, as_completed
    from distributed.comm import CommClosedError, connect
    from distributed.scheduler import KilledWorker
except ImportError:  # pragma: no cover - exercised only without the extra
    raise GeoSSLError(
        "--executor dask needs Dask's distributed scheduler: pip install 'geo-ssl[dask]'"
    ) from None

from geo_ssl.pipeline.common.procs import exit_with_run
from geo_ssl.pipeline.common.retry import StorageError

T = TypeVar("T")
R = TypeVar("R")

#: How long (seconds) a --scheduler address has to answer as a Dask scheduler.
_PROBE_TIMEOUT_S = 6.0
#: scheduler address (None: this process's LocalCluster) -> client, reused across stages of one process.
_clients: dict[str | None, Client] = {}


class ExitWithRun(WorkerPlugin):
    """Ties the workers of a LocalCluster to the process that started it (see procs.exit_with_run)."""

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
        check_scheduler(scheduler)
        # as silence_logs does for a LocalCluster: distributed's INFO records (a closed comm logs its
        # traceback when the scheduler goes away) are not this CLI's one-line output
        logging.getLogger("distributed").setLevel(logging.ERROR)
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


def check_scheduler(address: str, timeout: float = _PROBE_TIMEOUT_S) -> None:
    """Ask `address` what it is before a Client connects, and raise GeoSSLError (exit 2) unless a Dask
    scheduler answers within `timeout` seconds. A Client given an HTTP port (the dashboard's is a common
    mix-up) waits forever for a handshake, or reads the HTTP reply as a frame length and fails on a
    huge allocation."""

    async def identity() -> object:
        comm = await connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity"})
            return await comm.read()
        finally:
            comm.abort()

    with ThreadPoolExecutor(1) as thread:  # a loop of its own, even when the caller's thread runs one
        try:
            reply = thread.submit(asyncio.run, asyncio.wait_for(identity(), timeout + 2)).result()
        except TimeoutError:  # wait_for's: connected, but no scheduler answered
            reply = f"no answer in {timeout + 2:g} s"
        except OSError as exc:  # dask's connect: refused, unreachable, its own timeout
            raise GeoSSLError(f"--scheduler {address}: cannot connect ({exc})") from None
        except Exception as exc:  # bytes that are not Dask's protocol
            reply = f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
    if isinstance(reply, dict) and reply.get("type") == "Scheduler":
        return
    if not isinstance(reply, str):  # a worker's or a nanny's address answers identity too
        reply = f"a Dask {reply.get('type', 'server')} answered" if isinstance(reply, dict) else "odd answer"
    raise GeoSSLError(
        f"--scheduler {address}: not a Dask scheduler ({reply}); give the scheduler's address,"
        " e.g. tcp://host:8786 (not the dashboard's http port)"
    )


def shutdown() -> None:
    """Close every client (and the LocalClusters this process started)."""
    while _clients:
        _close(_clients.popitem()[1])


def _close(client: Client) -> None:
    cluster = client.cluster
    log = logging.getLogger("distributed.client")
    level = log.level
    log.setLevel(logging.CRITICAL)  # a client of a lost scheduler logs its cancelled reconnect as an error
    try:
        client.close()
        if cluster is not None:
            cluster.close()
    except Exception:  # closing at exit must never mask the run's own outcome
        pass
    finally:
        log.setLevel(level)


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
            except (CancelledError, CommClosedError) as exc:  # the scheduler went away (killed, network)
                pending.clear()  # nothing to cancel on a scheduler that is gone
                _close(_clients.pop(scheduler, client))
                where = f"at {scheduler}" if scheduler else "of this run's LocalCluster"
                raise StorageError(
                    f"{stage}: the Dask scheduler {where} went away ({type(exc).__name__}); finished work"
                    " is kept: rerun the same command to resume"
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
