"""Minimal Prometheus-style counters and histograms (text exposition format)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass


class Histogram:
    """Cumulative-bucket histogram, as Prometheus exposes them."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def exposition(self, name: str, help_text: str, labels: str = "") -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        sep = "," if labels else ""
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            lines.append(f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {running}')
        lines.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        suffix = f"{{{labels}}}" if labels else ""
        lines.append(f"{name}_sum{suffix} {self.sum:.6f}")
        lines.append(f"{name}_count{suffix} {self.count}")
        return lines


def counter(name: str, help_text: str, value: float, kind: str = "counter") -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value:g}"]


@dataclass(frozen=True, slots=True)
class NodeStats:
    """One streamer node's counters at a moment (``Service.stats()``), as /metrics shows
    them."""

    live_calls: int
    windows: int
    silent_windows: int
    scored: int
    dropped: int
    alerts_raised: int
    alerts_cleared: int
    calls_started: int
    redis_connected: bool
    undelivered_events: int
    inference_ms: Histogram
    batch_sizes: Histogram
    latency_ms: Histogram
