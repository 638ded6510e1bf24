"""One retry policy for every storage read and write (issue 18 item 4).

(a) Every retrying path -- retry_io, RetryingReader, the loader's RetryingStream, the shard cache's stat --
gives the same verdict for the same exception (the errors the two former lists disagreed on included).
(b) Through the fault proxy in front of moto's real S3 server: a loader read, a harvest write and a
run-folder upload each survive a few transient faults, and stop after the policy's attempts with exit 3
(StorageError; the loader's ShardReadError) when the fault persists.
"""

from __future__ import annotations

import datetime
import errno
import io
import json
import os

import aiohttp
import botocore.exceptions
import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.retry import (
    EXIT_STORAGE,
    RetryingReader,
    RetryPolicy,
    StorageError,
    is_transient,
    retry_io,
)
from geo_ssl.training.data.shard_cache import ShardCache
from geo_ssl.training.data.shard_io import RetryingStream, ShardReadError, open_with_retries
from tests.s3_support import TEST_CREDENTIALS, FaultProxy, WindowFaults, bucket_fs, moto_server, patched_env

NOW = RetryPolicy(attempts=2, backoff=0.0, jitter=0.0)  # the table below needs no waits


def _wrapped(cause: BaseException) -> OSError:
    exc = OSError("read failed")
    exc.__cause__ = cause
    return exc


def _client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


# (id, exception, transient?) -- the two lists disagreed on OSError without errno, EOFError, settings and
# credential errors of botocore; both retried a full disk
TABLE = [
    ("OSError-no-errno", OSError("cannot identify image file"), False),  # Pillow/pyarrow on bad bytes
    ("OSError-no-errno-from-reset", _wrapped(ConnectionResetError()), True),
    ("ConnectionResetError", ConnectionResetError(errno.ECONNRESET, "reset by peer"), True),
    ("ConnectionResetError-no-errno", ConnectionResetError(), True),
    ("TimeoutError", TimeoutError(), True),
    ("aiohttp-ClientPayloadError", aiohttp.ClientPayloadError("body cut short"), True),
    ("aiohttp-ClientConnectionError", aiohttp.ClientConnectionError(), True),
    ("botocore-EndpointConnectionError", botocore.exceptions.EndpointConnectionError(endpoint_url="x"), True),
    ("botocore-ClientError-503", _client_error("ServiceUnavailable", 503), True),
    ("botocore-NoCredentialsError", botocore.exceptions.NoCredentialsError(), False),
    (
        "botocore-CredentialRetrievalError",
        botocore.exceptions.CredentialRetrievalError(provider="p", error_msg="e"),
        False,
    ),
    ("botocore-NoRegionError", botocore.exceptions.NoRegionError(), False),
    ("botocore-ClientError-InvalidAccessKeyId", _client_error("InvalidAccessKeyId", 403), False),
    ("s3fs-503-EBUSY", OSError(errno.EBUSY, "Service is unable to handle request."), True),
    ("EIO", OSError(errno.EIO, "Input/output error"), True),
    ("FileNotFoundError", FileNotFoundError(errno.ENOENT, "No such file"), False),
    ("PermissionError", PermissionError(errno.EACCES, "Permission denied"), False),
    ("ENOSPC", OSError(errno.ENOSPC, "No space left on device"), False),
    ("EDQUOT", OSError(errno.EDQUOT, "Disk quota exceeded"), False),
    ("EOFError", EOFError("shard shorter than the offset to resume at"), False),
    ("ValueError", ValueError("a bug"), False),
    ("GeoSSLError", GeoSSLError("a user mistake"), False),
]


class _FailsOnce(io.BytesIO):
    """A file whose first read raises `exc` (each opener call makes a fresh one; `state` counts reads)."""

    def __init__(self, exc: BaseException, state: dict) -> None:
        super().__init__(b"0123456789")
        self.exc, self.state = exc, state

    def read(self, n: int = -1) -> bytes:
        self.state["reads"] += 1
        if self.state["reads"] == 1:
            raise self.exc
        return super().read(n)


def _retried_by_retry_io(exc: BaseException) -> bool:
    calls = []

    def fn() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise exc
        return "ok"

    try:
        return retry_io(fn, "reading x", NOW) == "ok"
    except (type(exc), StorageError):
        return False


def _retried_by_reader(exc: BaseException) -> bool:
    state = {"reads": 0}
    reader = RetryingReader(lambda _url: _FailsOnce(exc, state), "x", NOW)
    try:
        return reader.read(4) == b"0123"
    except (type(exc), StorageError):
        return False
    finally:
        reader.close()


def _retried_by_stream(exc: BaseException) -> bool:
    state = {"reads": 0}
    with RetryingStream("x", lambda: _FailsOnce(exc, state), NOW) as stream:
        try:
            return stream.read(4) == b"0123"
        except ShardReadError as err:
            assert err.transient is False and err.exit_code == 2
            return False


class _FlakyFS(MemoryFileSystem):
    """A memory filesystem whose next `info` raises `_FlakyFS.exc` once (the shard cache's stat)."""

    protocol = "flaky"
    exc: BaseException | None = None

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return super()._strip_protocol(path.removeprefix("flaky://"))

    def info(self, path: str, **kwargs):
        exc, _FlakyFS.exc = _FlakyFS.exc, None
        if exc is not None:
            raise exc
        return super().info(path, **kwargs)


def _retried_by_cache_stat(exc: BaseException, cache_dir: str) -> bool:
    fsspec.register_implementation("flaky", _FlakyFS, clobber=True)
    fs = _FlakyFS(skip_instance_cache=True)
    fs.pipe_file("/shards/train-000000.tar", b"0123456789")
    _FlakyFS.exc = exc
    try:
        size, _ = ShardCache(cache_dir, "1M", {})._describe("flaky:///shards/train-000000.tar", NOW, None)
        return size == 10
    except ShardReadError as err:
        assert err.transient is False
        return False


@pytest.mark.parametrize(("exc", "transient"), [t[1:] for t in TABLE], ids=[t[0] for t in TABLE])
def test_every_retrying_path_gives_the_same_verdict(exc, transient, tmp_path):
    verdicts = {
        "is_transient": is_transient(exc),
        "retry_io": _retried_by_retry_io(exc),
        "RetryingReader": _retried_by_reader(exc),
        "RetryingStream (loader)": _retried_by_stream(exc),
        "ShardCache stat": _retried_by_cache_stat(exc, str(tmp_path)),
    }
    assert verdicts == dict.fromkeys(verdicts, transient)


def test_policy_waits_grow_are_capped_jittered_and_bounded_by_a_deadline(monkeypatch):
    flat = RetryPolicy(backoff=1.0, max_wait=5.0, jitter=0.0)
    assert [flat.wait(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    jittered = RetryPolicy(backoff=1.0, max_wait=100.0, jitter=0.25)
    assert all(0.75 * 2 ** (n - 1) <= jittered.wait(n) <= 1.25 * 2 ** (n - 1) for n in range(1, 6))
    assert len({jittered.wait(3) for _ in range(20)}) > 1
    assert RetryPolicy(attempts=100, deadline=0.0).gives_up(1, 0.0)
    assert not RetryPolicy(attempts=3).gives_up(2, 0.0) and RetryPolicy(attempts=3).gives_up(3, 0.0)
    monkeypatch.setenv("GEO_SSL_IO_ATTEMPTS", "7")
    monkeypatch.setenv("GEO_SSL_IO_BACKOFF", "0.1")
    env = RetryPolicy.from_env()
    assert (env.attempts, env.backoff, env.max_wait, env.jitter) == (7, 0.1, 30.0, 0.25)


# ---- (b) through the fault proxy -----------------------------------------------------------------------

BUCKET = "geo-ssl-retry-policy"
ATTEMPTS = 3


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto behind a FaultProxy whose WindowFaults the tests aim at GETs or PUTs of one key; fsspec's s3
    pointed at the proxy, one botocore attempt (the retries are ours), GEO_SSL_IO_ATTEMPTS=3."""
    cache = tmp_path_factory.mktemp("run-cache")
    with moto_server(BUCKET) as moto_url, FaultProxy(moto_url, WindowFaults()) as proxy:
        bucket_fs(moto_url).pipe_file(f"{BUCKET}/shards/train-000000.tar", os.urandom(20_000))
        env = {
            **TEST_CREDENTIALS,
            "FSSPEC_S3": json.dumps({"client_kwargs": {"endpoint_url": proxy.url}}),
            "AWS_MAX_ATTEMPTS": "1",
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "GEO_SSL_IO_ATTEMPTS": str(ATTEMPTS),
            "GEO_SSL_IO_BACKOFF": "0.01",
            "GEO_SSL_RUN_CACHE": str(cache),
        }
        with patched_env(env):
            yield proxy.faults, bucket_fs(moto_url)


def _loader_read(run: str) -> None:
    url = f"s3://{BUCKET}/shards/train-000000.tar"
    policy = RetryPolicy(attempts=ATTEMPTS, backoff=0.01, jitter=0.0)
    with open_with_retries(url, {"default_block_size": 4096, "skip_instance_cache": True}, policy) as f:
        assert len(f.read()) == 20_000


def _harvest_write(run: str) -> None:
    from geo_ssl.pipeline.geoimagenet.store import ResultStore

    store = ResultStore(f"s3://{BUCKET}/{run}")
    row = {"photo_id": 7, "wnid": "n01", "status": "ok", "source": "api", "attempts": 1}
    store.append([{**row, "answered_at": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)}])
    assert store.read_all().column("photo_id").to_pylist() == [7]


def _run_folder_upload(run: str) -> None:
    from geo_ssl.training.trainer.run_store import RunStore

    store = RunStore(f"s3://{BUCKET}/{run}")
    store.prepare(resume=False)
    with open(os.path.join(store.local, "metrics.jsonl"), "w") as f:
        f.write('{"step": 1}\n')
    assert store.push() == 1


# (what, the requests the faults hit, the action)
PATHS = {
    "loader read": (lambda m, p: m == "GET" and "/shards/train-000000.tar" in p, _loader_read),
    "harvest write": (lambda m, p: m == "PUT" and "/results/part-" in p, _harvest_write),
    "run-folder upload": (
        lambda m, p: m == "PUT" and p.split("?")[0].endswith("/metrics.jsonl"),
        _run_folder_upload,
    ),
}


@pytest.mark.parametrize("what", list(PATHS))
def test_a_few_transient_faults_are_retried_through(s3, what):
    faults, _ = s3
    faults.matches, action = PATHS[what]
    faults.failed = 0
    faults.fail(after=0, count=ATTEMPTS - 1, modes=("503 ServiceUnavailable", "500"))
    try:
        action(f"ok-{what.replace(' ', '-')}")
    finally:
        faults.fail(after=0, count=0)
    assert faults.failed == ATTEMPTS - 1


@pytest.mark.parametrize("what", list(PATHS))
def test_a_persistent_fault_stops_after_the_policy_s_attempts_with_exit_3(s3, what):
    faults, _ = s3
    faults.matches, action = PATHS[what]
    faults.failed = 0
    faults.fail(after=0, count=10**6, modes=("503 ServiceUnavailable",))
    try:
        with pytest.raises((StorageError, ShardReadError)) as err:
            action(f"down-{what.replace(' ', '-')}")
    finally:
        faults.fail(after=0, count=0)
    message = str(err.value)
    assert err.value.exit_code == EXIT_STORAGE, message
    assert f"failed {ATTEMPTS} times" in message or f"after {ATTEMPTS} attempts" in message, message
    assert faults.failed == ATTEMPTS  # as many tries as the policy allows, no more


def test_a_lock_create_whose_answer_was_lost_is_ours(s3):
    """A retried conditional create finds the lock object it wrote itself: taken, not 'another run'."""
    from geo_ssl.pipeline.common import outlock

    _, fs = s3
    url = f"s3://{BUCKET}/locked/{outlock.LOCK_NAME}"
    me = outlock._my_record("write-shards")
    fs.pipe_file(url.removeprefix("s3://"), json.dumps(me).encode())  # the first try's PUT landed
    outlock._acquire_remote(url, me)
    with pytest.raises(GeoSSLError, match="another run is writing here"):
        outlock._acquire_remote(url, outlock._my_record("write-shards"))  # another token: refused
