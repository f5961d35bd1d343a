"""What opening a long call's page costs the server's other work: ``GET
/api/v1/calls/{id}`` of a call holding W window results, against the event loop that also
serves ingest under ``callmon serve``.

``PYTHONPATH=. python docs/results/bench_call_detail.py [--windows 7200] [--fetches 10]
[--baseline REF] [--out docs/results/bench_call_detail.json]`` stores one call with W
window results (7 200: two hours at a 1 s hop) in an embedded Redis, starts ``callmon
dashboard`` on it, and fetches the call ``--fetches`` times, one after another, while a
second client asks ``/healthz`` every 20 ms. A health check answered late is a request the
server's event loop could not get to: under ``serve``, audio frames of every live call wait
the same. It prints the fetch's median time and the health checks' latency (median, 99th
percentile, max) with no fetch under way and during the fetches, and checks each answer holds
the W windows.

With ``--baseline REF`` the dashboard of that git revision (from a temporary worktree) is
measured too, alternating with this checkout's, ``--rounds`` times each, and the ratios
printed: the same machine, the same minute.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import httpx
import redis
from bench_dashboard_render import checkouts, dashboard, report, store_calls
from bench_live_calls import window

from streamer import schema
from streamer.tools.redis_server import EmbeddedRedis

PROBE_EVERY_S = 0.02


class Prober(threading.Thread):
    """``GET /healthz`` every ``PROBE_EVERY_S``, each answer's latency kept with its time."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=url, timeout=30)
        self.stop = threading.Event()
        self.samples: list[tuple[float, float]] = []

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.monotonic()
            self.client.get("/healthz").raise_for_status()
            self.samples.append((t, time.monotonic() - t))
            self.stop.wait(max(0.0, PROBE_EVERY_S - (time.monotonic() - t)))

    def between(self, start: float, end: float) -> list[float]:
        return [lat for t, lat in self.samples if start <= t < end]


def latency_ms(samples: list[float], name: str) -> dict:
    ordered = sorted(samples)
    return {f"{name}_probes": len(ordered),
            f"{name}_median_ms": round(1000 * statistics.median(ordered), 1),
            f"{name}_p99_ms": round(1000 * ordered[min(len(ordered) - 1,
                                                       int(0.99 * len(ordered)))], 1),
            f"{name}_max_ms": round(1000 * ordered[-1], 1)}


def measure(url: str, call_id: str, windows: int, fetches: int) -> dict:
    client = httpx.Client(base_url=url, timeout=60)
    path = f"/api/v1/calls/{call_id}"
    first = client.get(path)  # warm: imports, connections
    first.raise_for_status()
    assert len(first.json()["timeline"]) == windows, "the call's timeline is incomplete"
    prober = Prober(url)
    prober.start()
    time.sleep(0.5)
    idle_from = time.monotonic()
    time.sleep(2.0)
    busy_from = time.monotonic()
    walls, bodies = [], []
    for _ in range(fetches):
        t = time.monotonic()
        reply = client.get(path)
        walls.append(time.monotonic() - t)
        reply.raise_for_status()
        bodies.append(reply.content)
    busy_to = time.monotonic()
    prober.stop.set()
    prober.join()
    for body in bodies:
        assert len(json.loads(body)["timeline"]) == windows, "an answer lost windows"
    return {"fetch_ms": round(1000 * statistics.median(walls), 1),
            "answer_mb": round(len(bodies[-1]) / 1e6, 2),
            **latency_ms(prober.between(idle_from, busy_from), "health_idle"),
            **latency_ms(prober.between(busy_from, busy_to), "health_fetching")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--windows", type=int, default=7200)
    p.add_argument("--fetches", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline", help="a git revision whose dashboard is measured alongside")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    with checkouts(args.baseline) as (sources, tmp):
        runs: dict[str, list[dict]] = {name: [] for name in sources}
        (tmp / "redis").mkdir()
        with EmbeddedRedis(data_dir=tmp / "redis", persist=False) as server:
            client = redis.Redis.from_url(server.url)
            call_id = store_calls(client, 1)[0]
            for first in range(0, args.windows, 1000):  # stored as the publisher stores them
                client.rpush(schema.call_timeline_key(call_id), *[
                    window(call_id, "customer", i)
                    for i in range(first, min(args.windows, first + 1000))])
            for _ in range(args.rounds):
                for name, source in sources.items():
                    with dashboard(server.url, source) as url:
                        runs[name].append(measure(url, call_id, args.windows, args.fetches))
                    print(name, runs[name][-1], flush=True)
    report(runs, args.baseline, ("fetch_ms", "health_fetching_p99_ms", "health_fetching_max_ms"),
           args.out, windows=args.windows, fetches=args.fetches, rounds=args.rounds)

if __name__ == "__main__":
    main()
