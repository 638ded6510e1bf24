"""Retries for storage I/O: a failing read is an outage, not bad data.

A GET that still fails after botocore's and s3fs's own retries (503 SlowDown, connection refused or
reset, timeouts) or a local EIO is retried here with exponential backoff. If it keeps failing, the
caller gets a `StorageError`: it is deliberately not an OSError, so no decoder's `except OSError` can
turn it into a reject row. Stages let it fail the unit of work (a shard, an index part), record nothing
for it, and exit with `EXIT_STORAGE` so that a rerun of the same command completes it.

Errors that retrying cannot fix pass through unchanged: a missing file, a folder where a file was
expected, a refused permission, a full disk (those are data or user errors the caller already handles).
Missing or rejected credentials, and a credentials profile that does not exist (botocore's
ProfileNotFound), become a `StorageError` at once, with exit code 2 (a setup mistake).

One classifier (`is_transient`) and one policy type (`RetryPolicy`) serve every retrying path: whole
reads and writes here (`retry_io`), seekable readers (`RetryingReader`), the loader's shard streams and
its shard cache (training/data/shard_io.py). Attempts and backoff of `retry_io`: `GEO_SSL_IO_ATTEMPTS`
(default 4) and `GEO_SSL_IO_BACKOFF` (seconds before the first retry, doubled each time, default 0.5).
One exception: a connection refused by an endpoint that has not answered since the process started
(reach.py probes it on first contact) is not retried: nothing is there, and the command says so at once.
"""

from __future__ import annotations

import errno
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.reach import never_answered, probe
from geo_ssl.pipeline.common.storage import ENV_PROFILE

T = TypeVar("T")

#: Exit code of a command stopped by storage that kept failing; nothing was lost, rerun to complete.
EXIT_STORAGE = 3
#: Exit code of a user or setup mistake (also used for missing credentials).
EXIT_USAGE = 2

_USER_ERRNOS = {
    errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EEXIST, errno.EROFS,
    errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG,
}  # fmt: skip
#: A write failed for want of space (disk full, quota, file size limit).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_PERMANENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)
_CREDENTIAL_ERRORS = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
#: A storage client refusing its own settings (no region, a malformed parameter): no retry fixes those.
_SETUP_ERRORS = {"NoRegionError", "ParamValidationError"}
#: A credentials profile named but found in no file (botocore raises it on first use of the client).
_PROFILE_ERRORS = {"ProfileNotFound"}
_TRANSIENT_MODULES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "fsspec", "s3fs", "gcsfs")


class StorageError(Exception):
    """Storage kept failing (or refused the credentials); the unit of work was not recorded."""

    def __init__(self, message: str, exit_code: int = EXIT_STORAGE) -> None:
        super().__init__(message, exit_code)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


def _chain(exc: BaseException) -> list[BaseException]:
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        out.append(exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return out


def credentials_problem(exc: BaseException) -> bool:
    """True when the exception (or its cause) says the credentials are missing or wrong."""
    for e in _chain(exc):
        if type(e).__name__ in _CREDENTIAL_ERRORS:
            return True
        response = getattr(e, "response", None)
        if isinstance(response, dict) and response.get("Error", {}).get("Code") in _CREDENTIAL_CODES:
            return True
    return False


def missing_profile(exc: BaseException) -> str | None:
    """The name of the credentials profile the exception (or its cause) says does not exist, else None."""
    for e in _chain(exc):
        if type(e).__name__ in _PROFILE_ERRORS:
            kwargs = getattr(e, "kwargs", None)
            name = kwargs.get("profile") if isinstance(kwargs, dict) else None
            return str(name) if name else "(unnamed)"
    return None


def profile_advice(name: str) -> str:
    """One line for a profile found in no file: which setting named it, which files were read, what to do.
    No "rerun when storage is back": nothing is down, the setting is wrong."""
    if os.environ.get(ENV_PROFILE) == name:
        setting = f"--storage-profile {name}"
    elif os.environ.get("AWS_PROFILE") == name:
        setting = f"AWS_PROFILE={name}"
    else:
        setting = f"storage profile {name!r}"
    files = " or ".join(
        f"{os.environ[var]} ({var})" if os.environ.get(var) else default
        for var, default in (("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
                             ("AWS_CONFIG_FILE", "~/.aws/config"))
    )  # fmt: skip
    return (
        f"{setting}: no such profile in {files}; add it there, name a profile that exists, or point "
        "AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE at the files that have it"
    )


def is_transient(exc: BaseException) -> bool:
    """Would trying again plausibly succeed? The one verdict of every retrying path.

    Yes: outages, throttling, timeouts, dropped connections (ConnectionError, TimeoutError, any error
    of a storage client library), an OSError with an errno (EIO; s3fs gives 503 EBUSY, 500 EREMOTEIO).
    No: missing files, refused permissions, a full disk or quota, credentials, a credentials profile
    that does not exist (ProfileNotFound is a botocore error, yet no retry finds it) or client settings, our
    own errors, and an OSError without errno -- that is what pyarrow and Pillow raise for bad bytes,
    while storage clients raise their own types or an errno -- unless it was raised from a transient
    error (an I/O layer wrapping a dropped connection)."""
    if isinstance(exc, (StorageError, GeoSSLError, MemoryError, *_PERMANENT)) or credentials_problem(exc):
        return False
    if missing_profile(exc) is not None:
        return False
    if type(exc).__name__ in _SETUP_ERRORS:
        return False
    if isinstance(exc, OSError) and exc.errno in _USER_ERRNOS | DISK_FULL_ERRNOS:
        return False
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    if (type(exc).__module__ or "").split(".")[0] in _TRANSIENT_MODULES:
        return True
    if isinstance(exc, OSError):
        if exc.errno is not None:
            return True
        return exc.__cause__ is not None and is_transient(exc.__cause__)
    return False


def describe(exc: BaseException) -> str:
    """One line for an exception, without the request dump botocore puts in some messages."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > 240:
        text = text[:237] + "..."
    return f"{type(exc).__name__}: {text}"


def attempts() -> int:
    try:
        return max(1, int(os.environ.get("GEO_SSL_IO_ATTEMPTS", "4")))
    except ValueError:
        return 4


def backoff() -> float:
    try:
        return max(0.0, float(os.environ.get("GEO_SSL_IO_BACKOFF", "0.5")))
    except ValueError:
        return 0.5


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to retry: `attempts` tries in all; waits of `backoff`, 2x, 4x ... capped at `max_wait`,
    each scaled by a random factor in [1 - jitter, 1 + jitter] (many workers hitting one throttled store
    do not retry in step); no further try once `deadline` seconds have passed since the first (None: no
    limit). `RetryPolicy.from_env()` is retry_io's default (GEO_SSL_IO_ATTEMPTS, GEO_SSL_IO_BACKOFF)."""

    attempts: int = 4
    backoff: float = 0.5
    max_wait: float = 30.0
    jitter: float = 0.25
    deadline: float | None = None

    @classmethod
    def from_env(cls) -> RetryPolicy:
        return cls(attempts=attempts(), backoff=backoff())

    def wait(self, failure: int) -> float:
        """Seconds to wait after the `failure`-th failed try (1-based)."""
        base = min(self.max_wait, self.backoff * 2 ** (failure - 1))
        return base * (1 - self.jitter + 2 * self.jitter * random.random()) if self.jitter else base

    def gives_up(self, failures: int, started: float, exc: BaseException | None = None) -> bool:
        """No more tries after `failures` failures of a call first tried at `started` (time.monotonic()),
        nor after `exc` if it is a refusal by an endpoint that never answered (reach.never_answered)."""
        if failures >= max(1, self.attempts) or (exc is not None and never_answered(exc)):
            return True
        return self.deadline is not None and time.monotonic() - started >= self.deadline


def retry_io(fn: Callable[[], T], what: str, policy: RetryPolicy | None = None) -> T:
    """Call `fn`; retry transient I/O errors as `policy` says (default: from the environment), then
    raise StorageError. `what` names the operation for the message ("reading s3://bucket/key")."""
    policy = policy or RetryPolicy.from_env()
    started, failures = time.monotonic(), 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if credentials_problem(exc):
                raise StorageError(
                    f"{what}: object storage refused the credentials ({describe(exc)}); "
                    "set them (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and rerun",
                    EXIT_USAGE,
                ) from exc
            profile = missing_profile(exc)
            if profile is not None:
                raise StorageError(profile_advice(profile), EXIT_USAGE) from exc
            if not is_transient(exc):
                raise
            failures += 1
            if never_answered(exc):
                raise StorageError(
                    f"{what} failed ({describe(exc)}); storage unreachable: nothing has answered there since "
                    "the start, so no retries; check the endpoint and rerun"
                ) from exc
            if policy.gives_up(failures, started):
                raise StorageError(
                    f"{what} failed {failures} times ({describe(exc)}); storage is failing or unreachable"
                ) from exc
            time.sleep(policy.wait(failures))


def fail_if_unreachable(url: str, what: str, setting: str) -> None:
    """StorageError (exit 3) at once if nothing listens at `url` on first contact (reach.probe), for
    clients whose retries are their own (the Flickr harvest); `what` names the service, `setting` the flag."""
    reason = probe(url)
    if reason is not None:
        raise StorageError(f"{what} unreachable at {url}: {reason}; check {setting} or start the server")


class RetryingReader:
    """A read-only, seekable file over `opener(url)` whose reads are retried with `retry_io`.

    After a failed read the file is reopened and positioned where the read began, so a decoder reading
    through it sees either the right bytes or a StorageError, never a short read it would call corrupt."""

    def __init__(self, opener: Callable[[str], object], url: str, policy: RetryPolicy | None = None) -> None:
        self._opener = opener
        self.url = url
        self.name = url
        self._f = None
        self._pos = 0
        self.policy = policy or RetryPolicy.from_env()
        retry_io(self._ensure, f"opening {url}", self.policy)

    def _ensure(self):
        if self._f is None:
            self._f = self._opener(self.url)
            if self._pos:
                self._f.seek(self._pos)
        return self._f

    def _do(self, op: Callable[[object], T]) -> T:
        try:
            return op(self._ensure())
        except Exception:
            self._drop()
            raise

    def _drop(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            try:
                f.close()
            except Exception:  # closing a broken connection may fail too; the data is not needed
                pass

    def read(self, n: int = -1) -> bytes:
        data = retry_io(lambda: self._do(lambda f: f.read(n)), f"reading {self.url}", self.policy)
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = retry_io(
            lambda: self._do(lambda f: f.seek(offset, whence)), f"reading {self.url}", self.policy
        )
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> RetryingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def explain_failure(exc: BaseException) -> tuple[str, int] | None:
    """(one line, exit code) for an error a command line should report without a traceback, else None.

    Storage that kept failing: exit 3 (nothing recorded for the failed units; rerun). Missing or refused
    credentials, a credentials profile that does not exist, and local paths that cannot be used (a file
    where a folder is needed, no permission, disk full): exit 2."""
    if isinstance(exc, StorageError):
        text = str(exc)
        if exc.exit_code == EXIT_STORAGE and "rerun" not in text:
            text += "; rerun the same command to resume"
        return text, exc.exit_code
    if any(type(e).__name__ in _SETUP_ERRORS for e in _chain(exc)):
        return (
            f"object storage refused its settings ({describe(exc)}); check --storage-region and "
            "--storage-options",
            EXIT_USAGE,
        )
    profile = missing_profile(exc)
    if profile is not None:
        return profile_advice(profile), EXIT_USAGE
    if credentials_problem(exc):
        return (
            f"object storage: no usable credentials ({describe(exc)}); set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and rerun",
            EXIT_USAGE,
        )
    if isinstance(exc, OSError) and exc.errno in _USER_ERRNOS:
        where = exc.filename2 or exc.filename or "a path"  # filename2: the target of a rename
        hint = "; free some space there and rerun the same command" if exc.errno in DISK_FULL_ERRNOS else ""
        return f"{where}: {exc.strerror or describe(exc)}{hint}", EXIT_USAGE
    if is_transient(exc):
        return (
            f"storage unreachable or failing ({describe(exc)}); nothing was lost: "
            "rerun the same command when it is back",
            EXIT_STORAGE,
        )
    return None
