"""Per-client limits of the ingest server: message rate, audio speed, connections per
address. Pure bookkeeping on a monotonic clock; the server decides what to do with a
verdict (close the socket, or stop reading it for a while)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable


class TokenBucket:
    """``rate`` events per second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self.updated = clock()

    def take(self, n: float = 1.0) -> bool:
        """Spend ``n`` tokens; False (and nothing spent) when there are not enough."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < n:
            return False
        self.tokens -= n
        return True


class AudioPacer:
    """Checks that a client's audio stays within ``speed`` × real time, after a head start
    of ``burst_s`` seconds of audio (jitter, a backlog flushed after a network hiccup).

    :meth:`add` returns how many seconds of wall time the client is ahead of that; the
    server refuses a client that is ahead. (Not reading the socket instead would hold the
    client's keep-alive pongs behind megabytes of buffered audio and drop it for a missed
    pong, with a far less useful error.)
    """

    def __init__(self, speed: float, burst_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.speed = speed
        self.burst_s = burst_s
        self.clock = clock
        self.started = clock()
        self.audio_s = 0.0

    def add(self, seconds: float) -> float:
        self.audio_s += seconds
        allowed = self.burst_s + self.speed * (self.clock() - self.started)
        return max(0.0, (self.audio_s - allowed) / self.speed)


class AddressLimit:
    """Counts open connections per client address."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: Counter[str] = Counter()

    def full(self, address: str) -> bool:
        return self.open[address] >= self.limit

    def acquire(self, address: str) -> None:
        self.open[address] += 1

    def release(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]
