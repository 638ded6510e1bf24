"""A network you can measure: a latency- and bandwidth-shaping HTTP proxy on loopback in front of the S3
test server (tests/s3_support.py), so loader figures include what a real bucket costs per request.

`ShapingProxy` is a `FaultProxy` (same forwarding, same fault rules, none by default) whose answers wait
`delay_ms` before their first byte (on top of the server's own time, as a network round trip adds) and
then leave at most `bandwidth` bytes/s per connection (each connection is served by its own thread, one
request at a time, so pacing one answer paces its connection). Only answers are shaped: uploads through
it are not. It counts requests and the bytes it sent.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.s3_support import FaultProxy, KeyFaults, WindowFaults

_CHUNK = 64 * 1024  # paced write size: 1.3 ms at 50 MB/s, fine enough for the sleeps to keep the rate


@dataclass
class ShapingStats:
    """What went through the proxy: requests answered (by method) and bytes sent (headers + bodies)."""

    requests: dict[str, int] = field(default_factory=dict)
    bytes_sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count_request(self, method: str) -> None:
        with self.lock:
            self.requests[method] = self.requests.get(method, 0) + 1

    def count_bytes(self, n: int) -> None:
        with self.lock:
            self.bytes_sent += n

    @property
    def total_requests(self) -> int:
        with self.lock:
            return sum(self.requests.values())


class _PacedWriter:
    """Stands in for one answer's `wfile`: the first write waits `delay` s, then bytes go out no sooner
    than due at `rate` bytes/s since the first byte (0: no cap), at least a chunk at a time."""

    def __init__(self, raw, delay: float, rate: float, stats: ShapingStats):
        self.raw, self.delay, self.rate, self.stats = raw, delay, rate, stats
        self.sent = 0
        self.t0: float | None = None

    def write(self, data: bytes) -> int:
        if self.t0 is None:
            time.sleep(self.delay)
            self.t0 = time.monotonic()
        view, i = memoryview(data), 0
        while i < len(view):
            # everything due by now in one write: a thread woken late (GIL, load) catches up at once
            # instead of paying a wake-up per chunk; never more than `rate` allows since the first byte
            left = n = len(view) - i
            if self.rate:
                want = min(_CHUNK, left)
                n = min(left, int((time.monotonic() - self.t0) * self.rate) - self.sent)
                if n < want:
                    time.sleep(max(0.0, self.t0 + (self.sent + want) / self.rate - time.monotonic()))
                    continue
            self.raw.write(view[i : i + n])
            self.sent += n
            self.stats.count_bytes(n)
            i += n
        return len(data)

    def flush(self) -> None:
        self.raw.flush()


class ShapingProxy(FaultProxy):
    """FaultProxy plus a first-byte delay (ms) per request and a bandwidth cap (bytes/s, 0: none) per
    connection; `stats` counts requests and bytes. Both knobs may be changed between requests."""

    def __init__(
        self,
        upstream: str,
        delay_ms: float = 0.0,
        bandwidth: float = 0.0,
        faults: KeyFaults | WindowFaults | None = None,
    ):
        super().__init__(upstream, faults if faults is not None else KeyFaults())
        self.delay_ms, self.bandwidth = delay_ms, bandwidth
        # paced writes end in a small segment; with Nagle on it waits for the client's delayed ACK
        # (~40 ms per answer on Linux): a cost of this proxy, not of the network it models
        self.server.RequestHandlerClass.disable_nagle_algorithm = True
        self.stats = ShapingStats()

    def __enter__(self) -> ShapingProxy:
        super().__enter__()
        return self

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        raw = h.wfile
        h.wfile = _PacedWriter(raw, self.delay_ms / 1000, self.bandwidth, self.stats)
        try:
            super()._handle(h)
        finally:
            h.wfile = raw
            self.stats.count_request(h.command)
