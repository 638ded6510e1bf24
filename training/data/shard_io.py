"""Opening shards for reading: transient storage errors are retried with backoff, re-opening at the byte
where the read broke, so a retry never loses or repeats a sample; optionally through a local cache.

An I/O error is not a data error: after the retries the read fails with `ShardReadError` naming the
shard and the byte offset (the run stops and is resumed later), it is never counted as a corrupt sample.
What is transient and how waits grow are the pipeline's (`retry.is_transient`, `retry.RetryPolicy`); only
the loader's numbers differ (`loader_policy`: 6 tries, 0.25 s doubling up to 8 s, as the README says).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import fsspec

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.retry import EXIT_STORAGE, EXIT_USAGE, RetryPolicy, is_transient
from geo_ssl.pipeline.common.storage import options_for
from geo_ssl.training.data.shard_list import open_shard


class ShardReadError(GeoSSLError):
    """A shard could not be read after the retries (storage down, credentials, network)."""

    transient = False  # True: the store did not answer (worth a later retry), not a refusal

    @property
    def exit_code(self) -> int:
        """The CLIs' exit status: 3 (storage kept failing, rerun later) when transient, else 2."""
        return EXIT_STORAGE if self.transient else EXIT_USAGE


def loader_policy(attempts: int = 6) -> RetryPolicy:
    """The loader's retries (`LoaderConfig.read_attempts` tries per failure stretch; 0.25 s doubling,
    capped at 8 s, no jitter): a shard read is retried more often and sooner than a build's reads."""
    return RetryPolicy(attempts=max(1, attempts), backoff=0.25, max_wait=8.0, jitter=0.0)


class RetryingStream:
    """A read-only stream over one shard that survives transient errors.

    Each failed read or open is retried after a growing wait on a fresh handle positioned at the byte
    offset reached so far (a seek: one ranged GET on object storage). `on_retry(message)` is called for
    each retry, so the loader can count them.
    """

    def __init__(
        self,
        url: str,
        opener: Callable[[], object],
        policy: RetryPolicy | None = None,
        on_retry: Callable[[str], None] | None = None,
    ):
        self.url, self._opener = url, opener
        self.policy = policy or loader_policy()
        self._on_retry = on_retry or (lambda _msg: None)
        self._f = None
        self.pos = 0
        self._open_at(0)

    # -- the stream protocol the tar reader uses
    def read(self, n: int = -1) -> bytes:
        return self._with_retries("read", lambda: self._f.read(n), advance=True)

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0:
            raise ValueError("only absolute seeks")
        self._with_retries("seek", lambda: self._f.seek(pos))
        self.pos = pos
        return pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            except Exception:
                pass
            self._f = None

    def __enter__(self) -> RetryingStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- retries
    def _open_at(self, pos: int) -> None:
        def attempt():
            f = self._opener()
            if pos:
                try:
                    f.seek(pos)
                except (OSError, ValueError, AttributeError, NotImplementedError):
                    _discard(f, pos)
            return f

        started, failures = time.monotonic(), 0
        while True:
            try:
                self._f = attempt()
                return
            except Exception as exc:
                failures = self._failed("open", exc, failures, started)

    def _with_retries(self, what: str, op: Callable, advance: bool = False):
        started, failures = time.monotonic(), 0
        while True:
            try:
                out = op()
            except Exception as exc:
                failures = self._failed(what, exc, failures, started)
                self.close()
                self._open_at(self.pos)
                continue
            if advance:
                self.pos += len(out)
            return out

    def _failed(self, what: str, exc: BaseException, failures: int, started: float) -> int:
        return _wait_or_raise(self.url, what, self.pos, exc, failures, started, self.policy, self._on_retry)


def _wait_or_raise(
    url: str,
    what: str,
    pos: int,
    exc: BaseException,
    failures: int,
    started: float,
    policy: RetryPolicy,
    on_retry: Callable[[str], None],
) -> int:
    """After a failed read of `url` at byte `pos`: wait before the next try (returns the failures so far),
    or raise ShardReadError when the error is not transient or the policy gives up."""
    failures += 1
    transient = is_transient(exc)
    if not transient or policy.gives_up(failures, started, exc):
        tried = f" after {failures} attempts" if transient else ""
        err = ShardReadError(
            f"shard {url}: {what} failed at byte {pos}{tried} ({type(exc).__name__}: {exc}); "
            "the samples read so far are kept, rerun with --resume once storage answers"
        )
        err.transient = transient
        raise err from exc
    wait = policy.wait(failures)
    on_retry(f"shard {url}: {what} at byte {pos} failed ({type(exc).__name__}), retry in {wait:.2f} s")
    time.sleep(wait)
    return failures


def read_range(
    url: str,
    start: int,
    stop: int | None,
    storage_options: dict | None = None,
    policy: RetryPolicy | None = None,
    on_retry: Callable[[str], None] | None = None,
) -> bytes:
    """Bytes [start, stop) of a remote shard (stop None: to its end) in one ranged GET, retried as a
    stream's reads (a part of a prefetch: training/data/prefetch.py)."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or options_for(url)))
    policy, started, failures = policy or loader_policy(), time.monotonic(), 0
    while True:
        try:
            return fs.cat_file(path, start=start, end=stop)
        except Exception as exc:
            what = f"reading bytes {start}-{'' if stop is None else stop - 1}"
            failures = _wait_or_raise(url, what, start, exc, failures, started, policy, on_retry or _quiet)


def _quiet(_message: str) -> None:
    pass


def _discard(f, n: int) -> None:
    while n > 0:
        got = len(f.read(min(n, 1 << 20)))
        if not got:
            raise EOFError("shard shorter than the offset to resume at")
        n -= got


def open_with_retries(
    url: str,
    storage_options: dict | None,
    policy: RetryPolicy | None = None,
    on_retry: Callable[[str], None] | None = None,
) -> RetryingStream:
    """Open one shard (local path or fsspec URL) for a sequential, retrying read."""
    return RetryingStream(url, lambda: open_shard(url, storage_options), policy, on_retry)
