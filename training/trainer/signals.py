"""SIGTERM and SIGINT (Ctrl-C) handling for a training process that has DataLoader workers.

Slurm, systemd, `timeout` and `kill -TERM -- -PGID` send SIGTERM to every process of the job, and Ctrl-C
in a terminal sends SIGINT to the whole foreground process group, the loader workers included. A worker
killed that way (or ending on its KeyboardInterrupt) makes PyTorch raise "DataLoader worker ... killed by
signal" from its SIGCHLD handler, i.e. at an arbitrary point of the main process (inside backward, in
the middle of an optimizer step or of a checkpoint write), so catching that error cannot give a
consistent checkpoint; neither can a KeyboardInterrupt raised wherever the main process happens to be.
Instead the workers never see either signal: the thread that forks them blocks both meanwhile
(`stop_signals_blocked`, `fork_shielded`); a forked child inherits the blocked mask and keeps it, so a
group signal stays pending in the workers for good, and only the main process acts on it (StopSignal:
finish the step, checkpoint, shut the workers down in order, exit 128 + the signal: 143 for SIGTERM,
130 for SIGINT).

Why not `signal.SIG_IGN` in the workers' worker_init_fn: PyTorch installs its own SIGTERM handler in
a worker before worker_init_fn runs, so a SIGTERM in between still kills the worker; a mask inherited
at fork leaves no such window, and needs nothing from the loader. A signal that reaches the main
process while the mask is up is not lost: another thread takes it (Python then runs the handler in
the main thread), or it stays pending until the mask is lifted after the epoch's first batch, a short
delay that loses no step. Workers still end on the loader's own shutdown, on SIGKILL, and when their
parent dies (PyTorch's watchdog).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


#: The signals that ask a run to stop with a checkpoint (exit 128 + the signal's number).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignal:
    """Turns SIGTERM and SIGINT into a flag the loop checks after each step (checkpoint, then a clean exit);
    `received` is the first signal's number."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        try:
            for signum in STOP_SIGNALS:
                # a signal ignored at start stays ignored (Ctrl-C and a job started with `&` by a script)
                if signal.getsignal(signum) != signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block SIGTERM and SIGINT in the calling thread for the duration (children forked meanwhile keep
    them blocked).

    Any thread may fork the workers (a prefetch thread too); the main thread, which runs Python's signal
    handlers, gets the signal once the mask is lifted (or at once, through another thread)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(STOP_SIGNALS) - set(previous))


def fork_shielded(iterable: Iterable[T]) -> Iterator[T]:
    """Iterate `iterable`, with SIGTERM and SIGINT blocked while its first item is made (when a DataLoader
    forks its workers), so that those workers are immune to a process-group SIGTERM or Ctrl-C."""
    it = iter(iterable)
    with stop_signals_blocked():
        try:
            first = next(it)
        except StopIteration:
            return
    yield first
    yield from it
