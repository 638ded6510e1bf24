"""A local cache of remote shards, capped in size, least recently used first out.

A cached file is named by a hash of the full URL and the object's size and ETag (plus the base name, for
people reading the folder), so two data sets whose shards share names never collide, and a shard
replaced in the bucket is fetched again. A file enters the cache whole or not at all (written to a temp
name, then renamed), so concurrent workers and killed runs never read half a shard. Local shards are read
in place, never cached.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import sys
import tempfile
import time
from collections.abc import Callable

import fsspec

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.storage import options_for  # the command's --storage-* settings
from geo_ssl.training.data.shard_io import RetryingStream, RetryPolicy, ShardReadError, _transient
from geo_ssl.training.data.shard_list import is_local, open_shard

_SUFFIX = ".tar"
_TEMP_PREFIX = ".tmp-"


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
        self, url: str, policy: RetryPolicy | None = None, on_retry: Callable[[str], None] | None = None
    ) -> tuple[str, bool]:
        """(local path, hit). A hit is touched so that eviction drops the least recently used first."""
        if is_local(url):
            return url.removeprefix("file://"), True
        try:
            size, etag = self._describe(url, policy, on_retry)
        except ShardReadError as exc:
            copy = self._cached_copy(url) if exc.transient else None
            if copy is None:
                raise
            print(f"geo-ssl loader: {exc}; using the cached copy {copy}", file=sys.stderr, flush=True)
            return copy, True
        path = os.path.join(self.dir, self.name_for(url, size, etag))
        if os.path.exists(path) and os.path.getsize(path) == size:
            try:
                os.utime(path)
            except OSError:
                pass  # evicted by another worker this instant: still readable, or fetched again below
            return path, True
        fd, temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=self.dir)
        try:
            with (
                os.fdopen(fd, "wb") as out,
                RetryingStream(url, lambda: open_shard(url, self.storage_options), policy, on_retry) as src,
            ):
                while chunk := src.read(8 << 20):
                    out.write(chunk)
            os.replace(temp, path)
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise
        self.evict(keep=path)
        return path, False

    def open(
        self, url: str, policy: RetryPolicy | None = None, on_retry: Callable[[str], None] | None = None
    ):
        """The cached shard opened for reading (fetched on a miss). An open file stays readable when another
        worker evicts it; one evicted between lookup and open is fetched again."""
        for _ in range(3):
            path, _ = self.path_for(url, policy, on_retry)
            try:
                return open(path, "rb", buffering=1 << 20)
            except FileNotFoundError:
                continue
        raise ShardReadError(
            f"shard {url}: evicted from --cache-dir {self.dir} as soon as fetched; raise --cache-limit"
        )

    def _describe(self, url: str, policy, on_retry) -> tuple[int, str]:
        policy = policy or RetryPolicy()
        failures = 0
        while True:
            try:
                fs, path = fsspec.core.url_to_fs(url, **(self.storage_options or options_for(url)))
                info = fs.info(path)
                return int(info.get("size") or 0), str(
                    info.get("ETag") or info.get("etag") or info.get("mtime") or ""
                )
            except Exception as exc:
                failures += 1
                if not _transient(exc) or failures >= policy.attempts:
                    err = ShardReadError(
                        f"shard {url}: cannot stat for the cache ({type(exc).__name__}: {exc})"
                    )
                    err.transient = _transient(exc)
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
