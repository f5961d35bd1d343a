"""``callmon bench soak``: calls that start and end continuously for a long time, in
phases of different sizes (a steady soak, or normal → twice normal → normal for
overload), against a ``callmon serve`` process. Every interval prints a row: live calls,
scored windows per second, latency percentiles, dropped windows, refused calls by code,
the server's CPU and RSS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from streamer import schema
from streamer.tools.bench import RATE, ServerProcess, _call, load_corpus_audio
from streamer.tools.redis_server import EmbeddedRedis, free_port


@dataclass(slots=True)
class Interval:
    t_s: float
    target_calls: int
    live_calls: int  # calls the load generator has open (including ones being refused)
    server_calls: int | None  # calls the server holds (its /healthz) at the interval's end
    calls_ended: int
    windows_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    dropped: int
    refused: dict[str, int]
    failed: int
    server_cpu_pct: float
    server_rss_mb: float


@dataclass(slots=True)
class SoakReport:
    phases: list[tuple[int, float]]
    mean_call_s: float
    frame_ms: int
    intervals: list[Interval] = field(default_factory=list)

    def row(self) -> dict:
        return asdict(self)


class _Probe:
    """Latency of each scored window: last sample sent → result on Redis pub/sub."""

    def __init__(self, frame_ms: int) -> None:
        self.frame_samples = RATE * frame_ms // 1000
        self.sent_at: dict[str, np.ndarray] = {}
        self.latencies: list[float] = []

    def observe(self, data: dict) -> None:
        if not data.get("speech"):
            return
        times = self.sent_at.get(data["call_id"])
        frame = int(round(data["end_s"] * RATE)) // self.frame_samples
        if times is not None and frame < len(times) and times[frame] > 0:
            self.latencies.append(1000 * (time.time() - times[frame]))

    def take(self) -> list[float]:
        out, self.latencies = self.latencies, []
        return out


async def run_soak(url: str, redis_url: str, audio: np.ndarray, *,
                   phases: list[tuple[int, float]], mean_call_s: float, frame_ms: int,
                   interval_s: float, server: ServerProcess | None,
                   on_interval=None) -> SoakReport:
    """Keep ``calls`` calls going for ``seconds`` in each phase; each call lasts a random
    0.5–1.5 × ``mean_call_s`` and is replaced by a new one when it ends (a refused call's
    slot retries after a second, as a telephony platform would)."""
    import redis.asyncio as aioredis

    report = SoakReport(phases=phases, mean_call_s=mean_call_s, frame_ms=frame_ms)
    probe = _Probe(frame_ms)
    summary: dict[str, dict] = {}
    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    await pubsub.psubscribe(schema.call_channel("soak-*"))

    async def listen() -> None:
        async for msg in pubsub.listen():
            if msg["type"] == "pmessage":
                probe.observe(json.loads(msg["data"]))

    listener = asyncio.create_task(listen())
    rng = np.random.default_rng(7)
    target = 0
    live: set[str] = set()
    serial = 0
    stop = asyncio.Event()

    async def slot(index: int) -> None:
        nonlocal serial
        while not stop.is_set() and index < target:
            serial += 1
            call_id = f"soak-{serial}"
            offset = int(rng.integers(0, len(audio) - RATE))
            seconds = float(rng.uniform(0.5, 1.5) * mean_call_s)
            live.add(call_id)
            await _call(url, call_id, np.roll(audio, -offset), duration_s=seconds,
                        frame_ms=frame_ms, sent_at=probe.sent_at, summary=summary)
            live.discard(call_id)
            if summary.get(call_id, {}).get("type") != "ended":
                await asyncio.sleep(1.0)  # refused or failed: retry later

    slots: dict[int, asyncio.Task] = {}
    started = time.monotonic()
    if server:
        server.cpu_since_mark()
    seen_ended: set[str] = set()

    async def close_interval(elapsed: float) -> Interval:
        held = await asyncio.to_thread(server.live_calls) if server else None
        lat = probe.take()
        new = [k for k in summary if k not in seen_ended]
        seen_ended.update(new)
        ended = [summary[k] for k in new if summary[k].get("type") == "ended"]
        refused = Counter(summary[k].get("code", "?") for k in new
                          if summary[k].get("type") == "error")
        failed = sum(1 for k in new if "error" in summary[k])
        for k in new:
            probe.sent_at.pop(k, None)
        q = np.percentile(lat, [50, 95, 99]) if lat else [None] * 3
        return Interval(
            t_s=round(elapsed, 1), target_calls=target, live_calls=len(live),
            server_calls=held, calls_ended=len(ended), windows_per_s=round(len(lat) / interval_s, 1),
            p50_ms=None if q[0] is None else round(float(q[0]), 1),
            p95_ms=None if q[1] is None else round(float(q[1]), 1),
            p99_ms=None if q[2] is None else round(float(q[2]), 1),
            dropped=sum(s["dropped"] for s in ended), refused=dict(refused), failed=failed,
            server_cpu_pct=round(server.cpu_since_mark(), 1) if server else 0.0,
            server_rss_mb=round(server.rss_mb(), 1) if server else 0.0)

    next_report = started + interval_s
    for calls, seconds in phases:
        target = calls
        phase_end = time.monotonic() + seconds
        ramp = min(5.0, seconds / 4)
        for i in range(calls):
            if i not in slots or slots[i].done():
                slots[i] = asyncio.create_task(slot(i))
                await asyncio.sleep(ramp / calls)  # spread call starts
        while time.monotonic() < phase_end:
            await asyncio.sleep(max(0.0, min(phase_end, next_report) - time.monotonic()))
            if time.monotonic() >= next_report:
                interval = await close_interval(time.monotonic() - started)
                report.intervals.append(interval)
                if on_interval:
                    on_interval(interval)
                next_report += interval_s
    stop.set()
    await asyncio.gather(*slots.values(), return_exceptions=True)
    listener.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listener
    await pubsub.aclose()
    await client.aclose()
    return report


def bench_soak(*, phases: list[tuple[int, float]], mean_call_s: float, frame_ms: int,
               interval_s: float, data: Path, env: dict | None = None,
               on_interval=None) -> SoakReport:
    audio = load_corpus_audio(data)
    with EmbeddedRedis(persist=False) as redis_server:
        port = free_port()
        server = ServerProcess(redis_url=redis_server.url, port=port, extra_env=env)
        try:
            server.wait_ready()
            return asyncio.run(run_soak(
                f"ws://127.0.0.1:{port}/v1/stream", redis_server.url, audio, phases=phases,
                mean_call_s=mean_call_s, frame_ms=frame_ms, interval_s=interval_s,
                server=server, on_interval=on_interval))
        finally:
            server.stop()


HEADER = ("| t s | offered | held | ended | windows/s | p50 ms | p95 ms | p99 ms | dropped | "
          "refused | failed | server CPU % | RSS MB |\n" + "|---" * 13 + "|")


def format_interval(i: Interval) -> str:
    refused = ", ".join(f"{k} {v}" for k, v in sorted(i.refused.items())) or "0"
    return (f"| {i.t_s:g} | {i.target_calls} | {i.server_calls} | {i.calls_ended} | "
            f"{i.windows_per_s} | {i.p50_ms} | {i.p95_ms} | {i.p99_ms} | {i.dropped} | "
            f"{refused} | {i.failed} | {i.server_cpu_pct} | {i.server_rss_mb} |")


def verdict(report: SoakReport, *, warmup: int = 1) -> dict:
    """The figures the issue asks for: RSS drift after warm-up, drops, p95 spread."""
    rows = report.intervals[warmup:] or report.intervals
    rss = [r.server_rss_mb for r in rows]
    p95 = [r.p95_ms for r in rows if r.p95_ms is not None]
    return {
        "rss_first_mb": rss[0] if rss else None, "rss_last_mb": rss[-1] if rss else None,
        "rss_max_mb": max(rss) if rss else None,
        "rss_growth_pct": round(100 * (rss[-1] - rss[0]) / rss[0], 1) if rss else None,
        "p95_min_ms": min(p95) if p95 else None, "p95_max_ms": max(p95) if p95 else None,
        "dropped": sum(r.dropped for r in report.intervals),
        "refused": dict(sum((Counter(r.refused) for r in report.intervals), Counter())),
        "failed": sum(r.failed for r in report.intervals),
        "calls_ended": sum(r.calls_ended for r in report.intervals),
    }
