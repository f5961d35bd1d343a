"""What the live stream to supervisors' browsers costs the dashboard process: N live calls,
each sending a window result a second, relayed to B browsers over Server-Sent Events.

``PYTHONPATH=. python docs/results/bench_live_stream.py [--calls 1000] [--browsers 5]
[--seconds 15] [--baseline REF] [--out docs/results/bench_live_stream.json]`` stores N live
calls in an embedded Redis, starts ``callmon dashboard`` on it, opens B streams
(``/api/v1/events``, read as fast as they come), and publishes each call's window results on
its pub/sub channel, spread over each second as the render benchmark does. Over
``--seconds`` it reads the dashboard process's CPU time (``/proc``) and counts the messages
the browsers received. Under ``callmon serve`` this CPU is the ingest's event loop's.

With ``--baseline REF`` the dashboard of that git revision (from a temporary worktree) is
measured too, alternating with this checkout's, ``--rounds`` times each, and the ratios
printed: the same machine, the same minute.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
from bench_dashboard_render import (
    Feeder,
    alongside,
    common_arguments,
    dashboard,
    report,
    store_calls,
)


def cpu_s(pid: int) -> float:
    """User and system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listening_pid(port: int) -> int:
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True,
                         text=True, check=True).stdout
    return int(out.split("pid=")[1].split(",")[0])


class Browser(threading.Thread):
    """One ``/api/v1/events`` stream, its messages counted."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.received = 0
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url + "/api/v1/events", timeout=None) as reply:
                for line in reply.iter_lines():
                    if line.startswith("data:"):
                        self.received += 1
                    if self.stop.is_set():
                        return
        except httpx.HTTPError:
            if not self.stop.is_set():  # the dashboard stopping ends it otherwise
                raise


def measure(url: str, redis_url: str, ids: list[str], browsers: int, seconds: float) -> dict:
    pid = listening_pid(int(url.rsplit(":", 1)[1]))
    streams = [Browser(url) for _ in range(browsers)]
    for stream in streams:
        stream.start()
    time.sleep(1.0)
    feeder = Feeder(redis_url, ids)
    feeder.start()
    time.sleep(2.0)  # past the start
    cpu0, got0, t0 = cpu_s(pid), sum(s.received for s in streams), time.monotonic()
    time.sleep(seconds)
    cpu1, got1, t1 = cpu_s(pid), sum(s.received for s in streams), time.monotonic()
    feeder.stop.set()
    feeder.join()
    for stream in streams:
        stream.stop.set()
    expected = len(ids) * browsers  # messages a second the browsers should receive
    return {"cpu_share": round((cpu1 - cpu0) / (t1 - t0), 4),
            "received_per_s": round((got1 - got0) / (t1 - t0), 1),
            "expected_per_s": expected,
            "cpu_us_per_message": round(1e6 * (cpu1 - cpu0) / max(1, got1 - got0), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--browsers", type=int, default=5)
    p.add_argument("--seconds", type=float, default=15.0)
    common_arguments(p)
    args = p.parse_args()
    with alongside(args.baseline) as (sources, redis_url, client, runs):
        for _ in range(args.rounds):
            for name, source in sources.items():
                ids = store_calls(client, args.calls)
                with dashboard(redis_url, source) as url:
                    runs[name].append(measure(url, redis_url, ids, args.browsers, args.seconds))
                print(name, runs[name][-1], flush=True)
    report(runs, args.baseline, ("cpu_share", "cpu_us_per_message"), args.out,
           calls=args.calls, browsers=args.browsers, seconds=args.seconds, rounds=args.rounds)


if __name__ == "__main__":
    main()
