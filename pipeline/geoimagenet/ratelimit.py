"""A calls-per-hour limit shared by the threads of one harvest: never exceeded, even in bursts.

Flickr allows about 3,600 calls per hour per key. A classic token bucket with a large capacity would let
a burst go past that in the first minutes, so this limiter holds no credit at all: a call may start only
`3600 / limit` seconds after the previous call *actually* started. Threads wait in turn under one lock, so
a thread that wakes late pushes the next start back instead of letting two calls bunch up. Retries take
their turn like any call.

At exactly `3600 / limit` seconds apart, N + 1 starts span exactly one window that allows N calls, so the
server, which sees each call a little later than it started (network and scheduling jitter: up to 9 ms
measured on loopback at 10 calls/s), counts N + 1 in some window and answers 429. The spacing therefore
has HEADROOM: 3% longer leaves 30 ms of every second (108 s of every hour) for that jitter, at 3% of the
throughput.
"""

from __future__ import annotations

import math
import threading
import time

#: Extra spacing, as a share of `3600 / calls_per_hour`, so that the limit holds at a window's edge.
HEADROOM = 0.03


class RateLimiter:
    """Space call starts at least `3600 / calls_per_hour * (1 + HEADROOM)` seconds apart across threads."""

    def __init__(self, calls_per_hour: float, clock=time.monotonic) -> None:
        if not (math.isfinite(calls_per_hour) and calls_per_hour > 0):
            raise ValueError(f"calls_per_hour must be a finite number > 0, got {calls_per_hour}")
        self.interval = 3600.0 / float(calls_per_hour) * (1 + HEADROOM)
        self._clock = clock
        self._lock = threading.Lock()
        self._last: float | None = None
        self.granted = 0

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Wait for this caller's turn; False when `stop` was set while waiting."""
        with self._lock:
            while True:
                now = self._clock()
                if self._last is None or now >= self._last + self.interval:
                    self._last = now
                    self.granted += 1
                    return True
                wait = self._last + self.interval - now
                if stop is None:
                    time.sleep(wait)
                elif stop.wait(min(wait, 0.5)):
                    return False
