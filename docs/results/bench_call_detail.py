"""What opening a long call's page, or the grid of many calls, costs the server's other
work: ``GET /api/v1/calls/{id}`` of a call holding W window results, or ``GET
/api/v1/calls?history=180`` of N live calls (what every browser that connects or reconnects
asks), against the event loop that also serves ingest under ``callmon serve``.

``PYTHONPATH=. python docs/results/bench_call_detail.py [--windows 7200] [--grid N]
[--fetches 10] [--baseline REF] [--out docs/results/bench_call_detail.json]`` stores one
call with W window results (7 200: two hours at a 1 s hop), or with ``--grid`` N live calls
with 360 each (both roles: the three minutes the grid's sparklines draw), or with
``--feed`` A alerts raised in the last hour in the alert log (every tenth acknowledged; the
page asks for the latest 5 000 of them whenever it loads or reconnects), in an embedded
Redis, starts ``callmon dashboard`` on it, and fetches the call (or the grid) ``--fetches``
times, one after another, while a second client asks ``/healthz`` every 20 ms. A health
check answered late is a request the server's event loop could not get to: under ``serve``,
audio frames of every live call wait the same. It prints the fetch's median time, the health
checks' latency (median, 99th percentile, max) with no fetch under way and during the
fetches, and what the health checks waited beyond the idle median in all, per fetch; and it
checks each answer is whole.

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
from collections.abc import Callable
from typing import Any

import httpx
import redis
from bench_dashboard_render import (
    alongside,
    common_arguments,
    dashboard,
    report,
    store_calls,
    store_timeline,
)
from bench_live_calls import window

from streamer import schema
from streamer.schema import Alert, CallEvent

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


GRID_HISTORY = 180  # the grid's SPARK_WINDOWS
FEED = "/api/v1/alerts?since=1h&type=alert&latest=true&limit=5000"  # the page's feed


def measure(url: str, path: str, whole: Callable[[Any], bool], fetches: int,
            at_once: int = 1) -> dict:
    first = httpx.get(url + path, timeout=60)  # warm: imports, connections
    first.raise_for_status()
    assert whole(first.json()), f"{path}: the answer is not whole"
    prober = Prober(url)
    prober.start()
    time.sleep(0.5)
    idle_from = time.monotonic()
    time.sleep(2.0)
    busy_from = time.monotonic()
    walls, bodies = [], []

    def fetch() -> None:  # one browser after another (with at_once, that many together)
        with httpx.Client(base_url=url, timeout=120) as client:
            for _ in range(fetches):
                t = time.monotonic()
                reply = client.get(path)
                walls.append(time.monotonic() - t)
                reply.raise_for_status()
                bodies.append(reply.content)

    browsers = [threading.Thread(target=fetch) for _ in range(at_once)]
    for browser in browsers:
        browser.start()
    for browser in browsers:
        browser.join()
    busy_to = time.monotonic()
    prober.stop.set()
    prober.join()
    assert all(whole(json.loads(body)) for body in bodies), f"{path}: an answer was not whole"
    idle, busy = prober.between(idle_from, busy_from), prober.between(busy_from, busy_to)
    # What one fetch cost the health checks in all: each one's wait beyond the idle median,
    # summed, per fetch (a faster fetch packs the same waits into less time, which shows in
    # the percentiles as a denser tail).
    late_s = sum(max(0.0, lat - statistics.median(idle)) for lat in busy)
    return {"fetch_ms": round(1000 * statistics.median(walls), 1),
            "answer_mb": round(len(bodies[-1]) / 1e6, 2),
            "health_late_ms_per_fetch": round(1000 * late_s / len(walls), 1),
            **latency_ms(idle, "health_idle"), **latency_ms(busy, "health_fetching")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--windows", type=int, default=7200)
    p.add_argument("--grid", type=int, default=0, metavar="N",
                   help="fetch the grid of N live calls instead of one call's page")
    p.add_argument("--feed", type=int, default=0, metavar="A",
                   help="fetch the alert feed of A alerts instead of one call's page")
    p.add_argument("--fetches", type=int, default=10)
    p.add_argument("--at-once", type=int, default=1, metavar="B",
                   help="B browsers fetching together (a reconnect storm), --fetches each")
    common_arguments(p)
    args = p.parse_args()
    with alongside(args.baseline) as (sources, redis_url, client, runs):
        if args.grid:
            ids = store_calls(client, args.grid)
            for call_id in ids:
                store_windows(client, call_id, 2 * GRID_HISTORY, roles=2)
            path = f"/api/v1/calls?history={GRID_HISTORY}"

            def whole(answer: Any) -> bool:
                return len(answer) == args.grid and all(
                    len(c["history"]) == GRID_HISTORY for c in answer)
        elif args.feed:
            store_calls(client, 1)  # (flushes the database)
            store_feed(client, args.feed)
            path = FEED

            def whole(answer: Any) -> bool:
                return len(answer) == min(args.feed, 5000) and all(
                    a["type"] == "alert" for a in answer)
        else:
            call_id = store_calls(client, 1)[0]
            store_windows(client, call_id, args.windows, roles=1)
            path = f"/api/v1/calls/{call_id}"

            def whole(answer: Any) -> bool:
                return len(answer["timeline"]) == args.windows
        for _ in range(args.rounds):
            for name, source in sources.items():
                with dashboard(redis_url, source) as url:
                    runs[name].append(measure(url, path, whole, args.fetches, args.at_once))
                print(name, runs[name][-1], flush=True)
    report(runs, args.baseline, ("fetch_ms", "health_fetching_p99_ms", "health_fetching_max_ms",
                                 "health_late_ms_per_fetch"),
           args.out, path=path, windows=2 * GRID_HISTORY if args.grid else args.windows,
           grid_calls=args.grid, feed_alerts=args.feed, fetches=args.fetches, at_once=args.at_once,
           rounds=args.rounds)


def store_windows(client: redis.Redis, call_id: str, windows: int, roles: int) -> None:
    """``windows`` window results as the publisher stores them, the customer's alone or
    alternating with the agent's."""
    store_timeline(client, call_id, windows,
                   lambda i: window(call_id, ("customer", "agent")[i % roles], i // roles))


def store_feed(client: redis.Redis, alerts: int) -> None:
    """``alerts`` alerts in the log as the publisher writes them (raised and cleared in
    turn, over 100 calls), with a call event between every ten, every tenth alert
    acknowledged."""
    pipe = client.pipeline(transaction=False)
    for i in range(alerts):
        call_id = f"call-{i % 100:03d}"
        alert = Alert(id=schema.new_id(), call_id=call_id, role="customer",
                      kind=("frustration", "distress")[i // 2 % 2],
                      state=("raised", "cleared")[i % 2], score=0.8, threshold=0.7,
                      window_index=i, call_time_s=float(i), node="bench-node")
        pipe.xadd(schema.ALERTS_STREAM, {"id": alert.id, "type": alert.type,
                                         "data": schema.dumps(alert)})
        if i % 10 == 0:
            pipe.hset(schema.ACKS_KEY, alert.id, json.dumps(
                {"alert_id": alert.id, "by": "bench", "at": time.time(), "note": None}))
            start = CallEvent(id=schema.new_id(), type="call_started", call_id=call_id,
                              roles=("customer",), sample_rate=8000, encoding="mulaw",
                              protocol="twilio", node="bench-node")
            pipe.xadd(schema.ALERTS_STREAM, {"id": start.id, "type": start.type,
                                             "data": schema.dumps(start)})
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()


if __name__ == "__main__":
    main()
