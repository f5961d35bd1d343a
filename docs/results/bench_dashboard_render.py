"""What the live grid costs the supervisor's browser: N live calls, each sending a window
result a second (the server at a 1 s hop), shown in a real headless Chromium.

``PYTHONPATH=. python docs/results/bench_dashboard_render.py [--calls 100] [--seconds 20]
[--baseline REF] [--out docs/results/bench_dashboard_render.json]`` stores N live calls in an
embedded Redis as the publisher does, starts ``callmon dashboard`` on it, opens the page, and
publishes each call's window results on its pub/sub channel, spread evenly over each second,
for ``--seconds``. It reads the page's main-thread time from Chromium (DevTools
``Performance.getMetrics``: tasks, script, style, layout) over that span, and checks that the
page kept up: every card shows its call's latest score when the feed stops.

With ``--call-page W`` the first call already has W window results (7 200: two hours at a
1 s hop) and the page measured is that call's page, following it live while the other calls
go on: what a supervisor watching one long call costs.

With ``--baseline REF`` the dashboard of that git revision (its own code and static files,
from a temporary worktree) is measured too, alternating with this checkout's, ``--rounds``
times each, and the ratios printed: the same machine, the same minute.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import redis

from streamer import schema
from streamer.schema import CallEvent
from streamer.tools.redis_server import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CALLMON_CHROMIUM", "/usr/bin/chromium")
NODE = "bench-node"
METRICS = ("TaskDuration", "ScriptDuration", "RecalcStyleDuration", "LayoutDuration")


def window(call_id: str, index: int, frustration: float) -> str:
    return json.dumps({
        "v": 1, "type": "window", "call_id": call_id, "role": "customer", "channel": 0,
        "window_index": index, "start_s": float(index), "end_s": index + 3.0, "speech": True,
        "speech_ratio": 0.7, "scores": {"neutral": 0.5, "happy": 0.1, "sad": 0.1,
                                        "angry": 0.2, "fearful": 0.1},
        "emotion": "neutral", "confidence": 0.5, "frustration": frustration, "distress": 0.2,
        "latency_ms": 20.0, "ts": time.time(), "node": NODE})


def store_calls(client: redis.Redis, n: int) -> list[str]:
    client.flushdb()
    client.set(schema.node_key(NODE), "{}")  # a live node: the dashboard's reaper keeps them
    ids = []
    for k in range(n):
        call_id = f"call-{k:03d}"
        start = CallEvent(id=schema.new_id(), type="call_started", call_id=call_id,
                          roles=("customer",), sample_rate=8000, encoding="mulaw",
                          protocol="twilio", node=NODE,
                          metadata={"agent": f"agent {k % 40}", "queue": f"q{k % 4}"})
        client.zadd(schema.LIVE_CALLS_KEY, {call_id: start.ts})
        client.hset(schema.call_state_key(call_id), mapping={
            "start": schema.dumps(start), "last:customer": window(call_id, 0, 0.1)})
        ids.append(call_id)
    return ids


class Feeder(threading.Thread):
    """Each call's window results at 1 per second, the calls spread over the second."""

    def __init__(self, url: str, ids: list[str], first_index: int = 1) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.ids = ids
        self.stop = threading.Event()
        self.last: dict[str, float] = {}
        self.last_end: dict[str, float] = {}
        self.index = first_index
        self.published = 0

    def run(self) -> None:
        rng = random.Random(0)
        ticks = 20
        while not self.stop.is_set():
            second = time.monotonic()
            for tick in range(ticks):
                pipe = self.client.pipeline(transaction=False)
                for call_id in self.ids[tick::ticks]:
                    value = round(rng.random() * 0.4, 2)
                    self.last[call_id] = value
                    self.last_end[call_id] = self.index + 3.0
                    pipe.publish(schema.call_channel(call_id),
                                 window(call_id, self.index, value))
                pipe.execute()
                self.published += len(self.ids[tick::ticks])
                delay = second + (tick + 1) / ticks - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if self.stop.is_set():
                    return
            self.index += 1


@contextlib.contextmanager
def dashboard(redis_url: str, source: Path):
    """``callmon dashboard`` run from ``source`` (a checkout), on a free port."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(source), "REDIS_URL": redis_url}
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, callmon_cli; sys.exit(callmon_cli.main())",
         "dashboard", "--dashboard-port", str(port)], cwd=source, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the dashboard from {source} did not start")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def store_timeline(client: redis.Redis, call_id: str, windows: int,
                   row: Callable[[int], str] | None = None) -> None:
    """``windows`` results in the call's timeline, a thousand a write: ``row(i)`` each, or
    this bench's window with frustration rising and falling each minute."""
    row = row or (lambda i: window(call_id, i, 0.1 + 0.3 * (i % 60) / 60))
    for first in range(0, windows, 1000):
        client.rpush(schema.call_timeline_key(call_id),
                     *map(row, range(first, min(windows, first + 1000))))


def measure(browser, url: str, redis_url: str, ids: list[str], seconds: float,
            call_page: int = 0) -> dict:
    page = browser.new_page(viewport={"width": 1920, "height": 1080})
    try:
        if call_page:
            page.goto(url + f"/#/call/{ids[0]}")
            page.wait_for_selector("#status.on", timeout=30_000)
            page.wait_for_selector("#call-charts svg polyline", state="attached",
                                   timeout=60_000)
        else:
            page.goto(url + "/")
            page.wait_for_selector("#status.on", timeout=30_000)
            page.wait_for_function(
                f"document.querySelectorAll('#calls .card').length === {len(ids)}",
                timeout=60_000)
        cdp = page.context.new_cdp_session(page)
        cdp.send("Performance.enable")
        feeder = Feeder(redis_url, ids, first_index=call_page or 1)
        feeder.start()
        time.sleep(2)  # past the first seconds' start-up
        before = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
        published, t0 = feeder.published, time.monotonic()
        time.sleep(seconds)
        after = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
        span = time.monotonic() - t0
        published = feeder.published - published
        feeder.stop.set()
        feeder.join()
        # Kept up: every card shows its call's latest score once the feed stops (the call
        # page: its call time reaches the last window's end).
        stopped = time.monotonic()
        if call_page:
            end = int(feeder.last_end[ids[0]])
            page.wait_for_function(
                "(text) => document.getElementById('call-meta').textContent.includes(text)",
                arg=f"{end // 60}:{end % 60:02d} of call time", timeout=30_000)
        else:
            expected = {c: f"frustration {v:.2f}" for c, v in feeder.last.items()}
            page.wait_for_function(
                """(expected) => Object.entries(expected).every(([id, text]) => {
                     const card = document.querySelector(`.card[data-call="${id}"] .scores`);
                     return card && card.textContent.startsWith(text); })""",
                arg=expected, timeout=30_000)
        caught_up_s = time.monotonic() - stopped
        figures = {name: round((after[name] - before[name]) / span, 4) for name in METRICS}
        return {"main_thread_busy": figures["TaskDuration"],
                "script_s_per_s": figures["ScriptDuration"],
                "style_s_per_s": figures["RecalcStyleDuration"],
                "layout_s_per_s": figures["LayoutDuration"],
                "windows_per_s": round(published / span, 1),
                "caught_up_s": round(caught_up_s, 2)}
    finally:
        page.close()


def revision(ref: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref], check=True,
                          capture_output=True, text=True).stdout.strip()


def dirty() -> bool:
    return bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                                "dashboard"], capture_output=True, text=True).stdout.strip())


@contextlib.contextmanager
def checkouts(baseline: str | None) -> Iterator[tuple[dict[str, Path], Path]]:
    """The dashboards to measure, by name: this checkout (``current``) and, with
    ``baseline``, that git revision from a temporary worktree; and a scratch folder. The
    worktree and the folder are removed after."""
    tmp = Path(tempfile.mkdtemp(prefix="callmon-bench-"))
    sources = {"current": ROOT}
    try:
        if baseline:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach",
                            str(tmp / "baseline"), baseline], check=True, capture_output=True)
            sources = {"baseline": tmp / "baseline", "current": ROOT}
        yield sources, tmp
    finally:
        if baseline:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(tmp / "baseline")], check=False, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def alongside(baseline: str | None
              ) -> Iterator[tuple[dict[str, Path], str, redis.Redis, dict[str, list[dict]]]]:
    """:func:`checkouts`, an embedded Redis (its URL and a client) and an empty list of
    rounds per dashboard."""
    with checkouts(baseline) as (sources, tmp):
        (tmp / "redis").mkdir()
        with EmbeddedRedis(data_dir=tmp / "redis", persist=False) as server:
            yield (sources, server.url, redis.Redis.from_url(server.url),
                   {name: [] for name in sources})


def common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline", help="a git revision whose dashboard is measured alongside")
    p.add_argument("--out", type=Path)


def report(runs: dict[str, list[dict]], baseline: str | None, ratios: tuple[str, ...],
           out: Path | None, **settings) -> None:
    """Each figure's median over the rounds, per dashboard, and with a baseline the
    ``ratios`` figures of this checkout's over its: printed, and written to ``out`` with
    every round's figures."""
    summary = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
               for name, rs in runs.items()}
    result = {**settings, "current": revision("HEAD") + (" with changes" if dirty() else ""),
              "baseline": revision(baseline) if baseline else None,
              "median": summary, "runs": runs}
    if baseline:
        result["ratio_current_to_baseline"] = {
            key: round(summary["current"][key] / summary["baseline"][key], 3)
            for key in ratios if summary["baseline"][key]}
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    if out:
        out.write_text(json.dumps(result, indent=1) + "\n")


def main() -> None:
    from playwright.sync_api import sync_playwright

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--call-page", type=int, default=0, metavar="W",
                   help="measure the first call's page, that call holding W windows")
    common_arguments(p)
    args = p.parse_args()
    with alongside(args.baseline) as (sources, redis_url, client, runs), \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu",
                                           "--disable-dev-shm-usage"])
        for _ in range(args.rounds):
            for name, source in sources.items():
                ids = store_calls(client, args.calls)
                if args.call_page:
                    store_timeline(client, ids[0], args.call_page)
                with dashboard(redis_url, source) as url:
                    runs[name].append(measure(browser, url, redis_url, ids, args.seconds,
                                              args.call_page))
                print(name, runs[name][-1], flush=True)
        browser.close()
    report(runs, args.baseline, ("main_thread_busy", "script_s_per_s", "style_s_per_s",
                                 "layout_s_per_s"), args.out,
           calls=args.calls, seconds=args.seconds, rounds=args.rounds,
           call_page_windows=args.call_page)

if __name__ == "__main__":
    main()
