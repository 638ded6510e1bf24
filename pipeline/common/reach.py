"""First contact with an endpoint: a wrong or dead address fails in a second, not after minutes of retries.

The retry policy (retry.py) treats a refused connection as a blip, which it is once a server has answered:
a restart, a load balancer shuffling. Before anything has answered, a refused connection or a host name
that does not resolve means nothing is there (a typo in --storage-endpoint or --api-url, a server not
started), and botocore's retries times ours take a minute or more to say so. So the first time a process
is about to talk to an endpoint, `probe` opens one TCP connection to it. A refusal or an unknown host is
recorded: the storage options then ask botocore for one try, and `RetryPolicy.gives_up` stops at the first
failure that `never_answered` recognises (exit 3, one line naming what was being read). A timeout or any
other outcome leaves the full retry policy in place. Each endpoint is probed once per process; URLs sent
through a proxy are not probed (the proxy, not the endpoint, would answer).
"""

from __future__ import annotations

import logging
import socket
import threading
import urllib.request
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

#: Seconds to wait for the TCP handshake; a slower endpoint is left to the client's timeouts and retries.
CONNECT_TIMEOUT = 3.0
_PORTS = {"http": 80, "https": 443}
_probed: dict[tuple[str, int], str | None] = {}  # (host, port) -> why nothing answered, or None
_lock = threading.Lock()


def _key(url: str) -> tuple[str, int] | None:
    parts = urlsplit(url)
    if parts.scheme not in _PORTS or not parts.hostname:
        return None
    try:
        return parts.hostname, parts.port or _PORTS[parts.scheme]
    except ValueError:  # a port that is not a number: the client says so in its own words
        return None


def _through_proxy(url: str) -> bool:
    parts = urlsplit(url)
    return bool(urllib.request.getproxies().get(parts.scheme)) and not urllib.request.proxy_bypass(
        parts.hostname or ""
    )


def _connect(key: tuple[str, int]) -> str | None:
    try:
        socket.getaddrinfo(*key, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"host name not found ({exc.strerror or exc})"
    try:
        socket.create_connection(key, timeout=CONNECT_TIMEOUT).close()
    except ConnectionRefusedError:
        return "connection refused, nothing listens there"
    except OSError as exc:  # a timeout or a network error: the client's retries decide
        log.debug("first contact with %s:%s: %s; left to the client's retries", *key, exc)
    return None


def probe(url: str) -> str | None:
    """Why nothing answers at `url`'s host and port (refused, unknown host), or None (it answered, timed
    out, goes through a proxy, or is not http(s)). Probed once per process per endpoint."""
    key = _key(url)
    if key is None:
        return None
    with _lock:
        if key in _probed:
            return _probed[key]
    reason = None if _through_proxy(url) else _connect(key)
    with _lock:
        _probed.setdefault(key, reason)
        return _probed[key]


def _chain(exc: BaseException | None) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and all(exc is not e for e in out):
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _endpoint(exc: BaseException) -> tuple[str, int] | None:
    """The (host, port) an exception names: botocore's endpoint_url, aiohttp's host and port."""
    kwargs = getattr(exc, "kwargs", None)
    url = kwargs.get("endpoint_url") if isinstance(kwargs, dict) else None
    if isinstance(url, str):
        return _key(url)
    host, port = getattr(exc, "host", None), getattr(exc, "port", None)
    return (host, port) if isinstance(host, str) and isinstance(port, int) else None


def never_answered(exc: BaseException) -> bool:
    """True when `exc` is a refused or unresolved connection to an endpoint whose first contact found
    nothing there: retrying would only wait for a server that is not running."""
    with _lock:
        dead = {k for k, reason in _probed.items() if reason is not None}
    chain = _chain(exc)
    if not dead or not any(isinstance(e, ConnectionRefusedError | socket.gaierror) for e in chain):
        return False
    return any(_endpoint(e) in dead for e in chain)
