"""Where a stage's per-part tasks run: a local process pool (the default) or a Dask cluster.

Every parallel stage (index-fmow, write-shards, synth-fmow) cuts its work into independent tasks whose
outputs are either returned to the stage or written by the task itself with temp + rename and a
completion record. That is what makes the engine interchangeable: a task that runs twice (a Dask
worker lost mid-task, a rerun after kill -9) writes the same bytes under the same name, so results are
byte-identical whichever engine ran them and whatever order tasks finished in.

The engine is chosen once per process: `configure()` (the CLI's `--executor` / `--scheduler`), else the
environment (`GEO_SSL_EXECUTOR=dask`, `GEO_SSL_SCHEDULER=tcp://host:8786`), else the process pool.
Dask is an optional extra (`pip install 'geo-ssl[dask]'`); its engine lives in `executor_dask`, which
this module imports (only when Dask is chosen) and which never imports this module back.

Workers never outlive the run that started them: each one watches the run's pid and exits when it is
gone, so a `kill -9` of the run stops its workers (and, with them, multiprocessing's resource tracker)
instead of leaving them writing outputs that race a rerun.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TypeVar

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.procs import exit_with_run  # kept here too: `executor.exit_with_run` callers

T = TypeVar("T")
R = TypeVar("R")

ENGINES = ("process", "dask")
ENV_EXECUTOR = "GEO_SSL_EXECUTOR"
ENV_SCHEDULER = "GEO_SSL_SCHEDULER"


@dataclass(frozen=True)
class ExecutorSettings:
    """Which engine runs tasks: "process" (a local pool) or "dask" (a LocalCluster, or `scheduler`)."""

    engine: str = "process"
    scheduler: str | None = None

    def as_dict(self) -> dict:
        return {"engine": self.engine, "scheduler": self.scheduler}


_configured: ExecutorSettings | None = None


def resolve(engine: str | None = None, scheduler: str | None = None) -> ExecutorSettings:
    """Settings from explicit values, falling back to the environment; a bad value is a user error."""
    scheduler = scheduler or os.environ.get(ENV_SCHEDULER) or None
    engine = engine or os.environ.get(ENV_EXECUTOR) or ("dask" if scheduler else "process")
    if engine not in ENGINES:
        raise GeoSSLError(f"--executor {engine!r}: use one of {', '.join(ENGINES)}")
    if scheduler is not None:
        if engine != "dask":
            raise GeoSSLError(f"--scheduler {scheduler}: needs --executor dask")
        if "://" not in scheduler:
            raise GeoSSLError(f"--scheduler {scheduler!r}: give the scheduler address, e.g. tcp://host:8786")
    return ExecutorSettings(engine, scheduler)


def configure(engine: str | None = None, scheduler: str | None = None) -> ExecutorSettings:
    """Choose the engine for every stage run by this process (the CLI calls this with its flags)."""
    global _configured
    _configured = resolve(engine, scheduler)
    if _configured.engine == "dask":
        from geo_ssl.pipeline.common import executor_dask  # noqa: F401  (fail now if Dask is missing)
    return _configured


@contextlib.contextmanager
def using(engine: str | None = None, scheduler: str | None = None) -> Iterator[ExecutorSettings]:
    """`configure()` for a block of code (Python API, tests); the previous choice is restored after."""
    global _configured
    previous = _configured
    try:
        yield configure(engine, scheduler)
    finally:
        _configured = previous


def current() -> ExecutorSettings:
    """The engine stages use now: what `configure()` set, else the environment's choice."""
    return _configured if _configured is not None else resolve()


def add_executor_flags(p: argparse.ArgumentParser) -> None:
    """--executor and --scheduler of every stage that cuts its work into tasks (read by `configure`)."""
    g = p.add_argument_group("where tasks run")
    g.add_argument("--executor", choices=ENGINES, default=None,
                   help="process pool (default) or Dask (env GEO_SSL_EXECUTOR)")  # fmt: skip
    g.add_argument("--scheduler", default=None, metavar="URL",
                   help="existing Dask scheduler, e.g. tcp://host:8786 (default: a LocalCluster of --workers; "
                        "env GEO_SSL_SCHEDULER)")  # fmt: skip


def run_tasks(
    fn: Callable[[T], R],
    tasks: Iterable[T],
    workers: int,
    *,
    stage: str,
    in_flight: int = 2,
    start_method: str = "spawn",
    preload: Sequence[str] = (),
    local_only: bool = False,
) -> Iterator[R]:
    """Yield `fn(task)` for every task, in completion order, on the configured engine.

    `fn` must be a module-level function (it is pickled by name). At most `in_flight` tasks per worker
    are queued, so `tasks` may be a lazy generator over a plan too large to hold. With the process
    engine and one worker, tasks run in this process. `local_only` keeps tasks on this machine (a
    stage writing to an in-memory filesystem). A lost process-pool worker ends the run with a
    one-line error (the rerun resumes); a lost Dask worker's task is rerun by the scheduler.
    """
    settings = current()
    if settings.engine == "dask" and not local_only:
        from geo_ssl.pipeline.common import executor_dask

        yield from executor_dask.run_tasks(
            fn, tasks, workers, stage=stage, in_flight=in_flight, scheduler=settings.scheduler
        )
        return
    if workers <= 1 or local_only:
        yield from map(fn, tasks)
        return
    yield from _process_pool(fn, tasks, workers, stage, in_flight, start_method, preload)


def _process_pool(
    fn: Callable[[T], R],
    tasks: Iterable[T],
    workers: int,
    stage: str,
    in_flight: int,
    start_method: str,
    preload: Sequence[str],
) -> Iterator[R]:
    if start_method not in multiprocessing.get_all_start_methods():
        start_method = "spawn"
    # spawn or forkserver, never fork: the parent may hold threads (Arrow, torch, tqdm) a fork copies locked
    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver" and preload:
        ctx.set_forkserver_preload(list(preload))  # workers fork with heavy imports already done
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=exit_with_run, initargs=(os.getpid(),)
    )
    window = max(1, in_flight) * workers
    pending: set[Future] = set()
    finished = False
    try:
        for task in tasks:
            pending.add(pool.submit(fn, task))
            while len(pending) >= window:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (f.result() for f in done)
        finished = True
    except BrokenProcessPool as exc:
        raise GeoSSLError(
            f"a {stage} worker process died ({exc}); rerun the same command to resume"
        ) from None
    finally:
        # On an error or an abandoned generator, do not wait for queued tasks; running ones finish.
        pool.shutdown(wait=finished, cancel_futures=not finished)
