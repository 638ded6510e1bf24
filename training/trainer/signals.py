"""SIGTERM handling for a training process that has DataLoader workers.

Slurm, systemd, `timeout` and `kill -TERM -- -PGID` send SIGTERM to every process of the job, the
loader workers included. A worker killed that way makes PyTorch raise "DataLoader worker ... killed by
signal" from its SIGCHLD handler, i.e. at an arbitrary point of the main process (inside backward, in
the middle of an optimizer step or of a checkpoint write), so catching that error cannot give a
consistent checkpoint. Instead the workers never see SIGTERM: the thread that forks them blocks it
meanwhile (`sigterm_blocked`, `fork_shielded`); a forked child inherits the blocked mask and keeps it,
so a group SIGTERM stays pending in the workers for good, and only the main process acts on it
(StopSignal: finish the step, checkpoint, shut the workers down in order, exit 143).

Why not `signal.SIG_IGN` in the workers' worker_init_fn: PyTorch installs its own SIGTERM handler in
a worker before worker_init_fn runs, so a SIGTERM in between still kills the worker; a mask inherited
at fork leaves no such window, and needs nothing from the loader. A SIGTERM that reaches the main
process while the mask is up is not lost: another thread takes it (Python then runs the handler in
the main thread), or it stays pending until the mask is lifted after the epoch's first batch; an epoch
starts right after an epoch-end checkpoint, so that short delay loses no step. Workers still end on
the loader's own shutdown, on SIGKILL, and when their parent dies (PyTorch's watchdog).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class StopSignal:
    """Turns SIGTERM into a flag the loop checks after each step (checkpoint, then a clean exit)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: Any = None

    def __enter__(self) -> StopSignal:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


@contextlib.contextmanager
def sigterm_blocked() -> Iterator[None]:
    """Block SIGTERM in the calling thread for the duration (children forked meanwhile keep it blocked).

    Any thread may fork the workers (a prefetch thread too); the main thread, which runs Python's signal
    handlers, gets the signal once the mask is lifted (or at once, through another thread)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        if signal.SIGTERM not in previous:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def fork_shielded(iterable: Iterable[T]) -> Iterator[T]:
    """Iterate `iterable`, with SIGTERM blocked while its first item is made (when a DataLoader forks
    its workers), so that those workers are immune to a process-group SIGTERM."""
    it = iter(iterable)
    with sigterm_blocked():
        try:
            first = next(it)
        except StopIteration:
            return
    yield first
    yield from it
