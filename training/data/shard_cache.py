"""A local cache of remote shards, capped in size, least recently used first out.

A cached file is named by a hash of the full URL and the object's size and ETag (plus the base name, for
people reading the folder), so two data sets whose shards share names never collide, and a shard
replaced in the bucket is fetched again. A file enters the cache whole or not at all (written to a temp
name, then renamed), so concurrent workers and killed runs never read half a shard. Local shards are read
in place, never cached.

A shard whose manifest.parquet row gives its sha256 is hashed while it is written (no second read): one
whose bytes differ is fetched once more (damage in transit), and a second mismatch is final: it is not
admitted, a small `.sha256-mismatch` file with the reason takes its place (so neither this run's other
workers nor later runs fetch it again), and `NotTheShardError` names it. Same size, other bytes: the
folder listing cannot tell such a shard of another build (another k) from the manifest's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import posixpath
import tempfile
import time
from collections.abc import Callable

import fsspec

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.logs import get_logger
from geo_ssl.pipeline.common.retry import RetryPolicy, is_transient
from geo_ssl.pipeline.common.storage import options_for  # the command's --storage-* settings
from geo_ssl.training.data.shard_io import RetryingStream, ShardReadError, loader_policy
from geo_ssl.training.data.shard_list import is_local, open_shard

log = get_logger(__name__)
_SUFFIX = ".tar"
_DOWN_FOR = 60.0  # seconds a store that failed a whole retry sequence is taken for down
_TEMP_PREFIX = ".tmp-"
_MISMATCH = ".sha256-mismatch"


class NotTheShardError(GeoSSLError):
    """A fetched shard's sha256 is not the one manifest.parquet records (fetched twice). `new`: this run
    was not told yet (the reader says it once per run, not once per worker and epoch)."""

    new = True


def parse_size(text: str | int) -> int:
    """'20G', '512M', '1.5T', '1000000' to bytes (K, M, G, T are powers of 1024)."""
    if isinstance(text, int):
        return text
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    s = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = s[-1:] if s[-1:] in units else ""
    try:
        value = float(s[: len(s) - len(unit)])
    except ValueError:
        raise GeoSSLError(f"cache limit {text!r}: not a size (examples: 20G, 512M, 1000000)") from None
    if value <= 0:
        raise GeoSSLError(f"cache limit {text!r}: must be positive")
    return int(value * units[unit])


class ShardCache:
    """`path_for(url)` returns a local file holding the shard, fetching it on a miss. Each lookup asks the
    store for the object's size and ETag (one HEAD), so a replaced object is never served stale."""

    _down_until = 0.0  # monotonic time until which this process takes the store for down (one try per HEAD)

    @classmethod
    def store_down(cls) -> None:
        """The store failed a whole retry sequence: for a while, check each shard once, not 6 times."""
        cls._down_until = time.monotonic() + _DOWN_FOR

    def __init__(self, cache_dir: str, limit: int | str, storage_options: dict | None = None):
        self.dir = os.fspath(cache_dir)
        self.limit = parse_size(limit)
        self.storage_options = storage_options
        try:
            os.makedirs(self.dir, exist_ok=True)
        except OSError as exc:
            raise GeoSSLError(f"--cache-dir {self.dir}: cannot create ({exc.strerror})") from exc
        if not os.access(self.dir, os.W_OK):
            raise GeoSSLError(f"--cache-dir {self.dir}: not writable")

    def name_for(self, url: str, size: int, etag: str) -> str:
        """`{hash of URL}-{hash of URL, size, ETag}-{shard name}.tar`: the first part finds any cached copy
        of a URL, the second tells its versions apart."""
        version = hashlib.sha256(f"{url}\0{size}\0{etag}".encode()).hexdigest()[:16]
        base = posixpath.basename(url).removesuffix(_SUFFIX)[:60]
        return f"{self._url_tag(url)}-{version}-{base}{_SUFFIX}"

    @staticmethod
    def _url_tag(url: str) -> str:
        return hashlib.sha256(url.encode()).hexdigest()[:16]

    def _cached_copy(self, url: str) -> str | None:
        """The newest cached copy of `url`, whatever its version."""
        tag = self._url_tag(url) + "-"
        copies = [path for _, _, path in self.entries() if os.path.basename(path).startswith(tag)]
        return copies[-1] if copies else None

    def path_for(
        self,
        url: str,
        policy: RetryPolicy | None = None,
        on_retry: Callable[[str], None] | None = None,
        sha256: str = "",
    ) -> tuple[str, bool]:
        """(local path, hit). A hit is touched so that eviction drops the least recently used first.
        `sha256`: manifest.parquet's, checked on a fetch (NotTheShardError when it differs twice)."""
        if is_local(url):
            return url.removeprefix("file://"), True
        try:
            size, etag = self._describe(url, policy, on_retry)
        except ShardReadError as exc:
            copy = self._cached_copy(url) if exc.transient else None
            if copy is None:
                raise
            log.warning("geo-ssl loader: %s; using the cached copy %s", exc, copy)
            ShardCache.store_down()
            return copy, True
        path = os.path.join(self.dir, self.name_for(url, size, etag))
        marker = f"{path.removesuffix(_SUFFIX)}-{sha256[:16]}{_MISMATCH}"  # this object vs. this manifest
        if sha256 and os.path.exists(marker):
            raise _refused(marker)
        if os.path.exists(path) and os.path.getsize(path) == size:
            try:
                os.utime(path)
            except OSError:
                pass  # evicted by another worker this instant: still readable, or fetched again below
            return path, True
        got = self._fetch(url, path, sha256, policy, on_retry)
        if got:  # damage in transit first: one more fetch
            if on_retry:
                on_retry(f"shard {url}: sha256 is not manifest.parquet's, fetching it again")
            got = self._fetch(url, path, sha256, policy, on_retry)
        if got:
            _write_marker(
                marker,
                f"shard {url}: sha256 {got[:16]}.. is not manifest.parquet's {sha256[:16]}.., fetched twice "
                "(another build's shard of the same size?)",
            )
            raise _refused(marker)
        self.evict(keep=path)
        return path, False

    def _fetch(self, url: str, path: str, sha256: str, policy, on_retry) -> str:
        """Download `url` whole to `path`, hashing the bytes as they are written when `sha256` is given;
        returns "" once admitted, else the sha256 it got instead (the download is dropped)."""
        digest = hashlib.sha256() if sha256 else None
        fd, temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=self.dir)
        try:
            with (
                os.fdopen(fd, "wb") as out,
                RetryingStream(url, lambda: open_shard(url, self.storage_options), policy, on_retry) as src,
            ):
                while chunk := src.read(8 << 20):
                    out.write(chunk)
                    if digest:
                        digest.update(chunk)
            if digest and digest.hexdigest() != sha256:
                os.unlink(temp)
                return digest.hexdigest()
            os.replace(temp, path)
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise
        return ""

    def open(
        self,
        url: str,
        policy: RetryPolicy | None = None,
        on_retry: Callable[[str], None] | None = None,
        sha256: str = "",
    ):
        """The cached shard opened for reading (fetched on a miss). An open file stays readable when another
        worker evicts it; one evicted between lookup and open is fetched again."""
        for _ in range(3):
            path, _ = self.path_for(url, policy, on_retry, sha256)
            try:
                return open(path, "rb", buffering=1 << 20)
            except FileNotFoundError:
                continue
        raise ShardReadError(
            f"shard {url}: evicted from --cache-dir {self.dir} as soon as fetched; raise --cache-limit"
        )

    def _describe(self, url: str, policy, on_retry) -> tuple[int, str]:
        policy = policy or loader_policy()
        # the store just failed every retry of another shard's check: one try each, not a minute of waits
        if time.monotonic() < ShardCache._down_until:
            policy = dataclasses.replace(policy, attempts=1)
        started, failures = time.monotonic(), 0
        while True:
            try:
                fs, path = fsspec.core.url_to_fs(url, **(self.storage_options or options_for(url)))
                info = fs.info(path)
                ShardCache._down_until = 0.0
                return int(info.get("size") or 0), str(
                    info.get("ETag") or info.get("etag") or info.get("mtime") or ""
                )
            except Exception as exc:
                failures += 1
                transient = is_transient(exc)
                if not transient or policy.gives_up(failures, started, exc):
                    err = ShardReadError(
                        f"shard {url}: cannot stat for the cache ({type(exc).__name__}: {exc})"
                    )
                    err.transient = transient
                    raise err from exc
                if on_retry:
                    on_retry(f"shard {url}: stat failed ({type(exc).__name__}), retrying")
                time.sleep(policy.wait(failures))

    def entries(self) -> list[tuple[float, int, str]]:
        """(last use, size, path) of the cached shards, oldest first."""
        out = []
        for name in os.listdir(self.dir):
            if name.startswith(_TEMP_PREFIX) or not name.endswith(_SUFFIX):
                continue
            path = os.path.join(self.dir, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            out.append((st.st_mtime, st.st_size, path))
        return sorted(out)

    def evict(self, keep: str | None = None) -> int:
        """Drop least recently used shards until the cache fits its limit; returns bytes freed."""
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        freed = 0
        for _, size, path in entries:
            if total <= self.limit:
                break
            if path == keep:
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass  # another worker evicted it
            total -= size
            freed += size
        return freed


def _run_id() -> str:
    """The loader's main process: the parent of a DataLoader worker, else this process."""
    from torch.utils.data import get_worker_info

    return str(os.getppid() if get_worker_info() is not None else os.getpid())


def _write_marker(path: str, reason: str, told: str = "") -> None:
    """`reason`, then the run last told, in a `.sha256-mismatch` file (whole or not at all)."""
    fd, temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=os.path.dirname(path))
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(f"{reason}\n{told}\n")
    os.replace(temp, path)


def _refused(marker: str) -> NotTheShardError:
    """The error a mismatch file stands for; `new` the first time this run meets it (the file notes it)."""
    with open(marker, encoding="utf-8") as f:
        reason, _, told = f.read().partition("\n")
    err = NotTheShardError(reason)
    err.new = told.strip() != _run_id()
    if err.new:
        try:
            _write_marker(marker, reason, _run_id())
        except OSError:
            pass  # a read-only cache: said again, no harm
    return err
