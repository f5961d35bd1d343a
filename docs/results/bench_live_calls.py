"""How long the dashboard takes to list N live calls (``GET /api/v1/calls``, and every
browser that connects or reconnects), in a real Redis, standalone and Cluster.

``PYTHONPATH=. python docs/results/bench_live_calls.py [--calls 100,2000] [--reload 360]
[--kinds standalone,cluster] [--out docs/results/bench_live_calls.json]`` stores N calls as
the publisher stores them (start, each role's latest window, an alert on every fifth call),
then times, alternating, five times each:

- ``call_by_call``: each call's state read on its own (two round trips for a call with
  alerts: how ``store.live_calls`` read until it read them all in one pipeline);
- ``live_calls``: ``store.live_calls`` as the API serves it;

and, over the same stored messages, decoding them as ``store._decode`` does against parsing
and then re-encoding every one (how it checked a message could be served). With ``--reload``
each call also gets ``--reload`` window results in its timeline, and the dashboard's reload
is timed as the store serves it: the list then each call's timeline tail (what the browser
fetched call by call before) against ``live_calls(history=…)`` (one request now), with the
JSON each answer would carry, and the sparklines alone from the same stored rows: each row
decoded whole (how ``store.sparkline`` read them) against its fields matched (how it reads
them now). It prints the medians and their ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from dashboard import store
from streamer import redis_client, schema
from streamer.schema import CallEvent, WindowResult
from streamer.tools.redis_server import EmbeddedCluster, EmbeddedRedis

ROUNDS = 5


def window(call_id: str, role: str, index: int = 41) -> str:
    """A window result as the publisher stores it."""
    return schema.dumps(WindowResult(
        call_id=call_id, role=role, channel=0, window_index=index, start_s=float(index),
        end_s=index + 3.0, speech=True, speech_ratio=0.71,
        scores={"neutral": 0.52, "happy": 0.11, "sad": 0.09, "angry": 0.2, "fearful": 0.08},
        frustration=0.21, distress=0.17, latency_ms=23.5, node="host:1234"))


def sparkline_decoding(rows: list[bytes], points: int) -> tuple[list, float]:
    """``store.sparkline`` as it was: every row decoded whole, then the fields taken."""
    timeline = store._decode_rows(rows)
    ends = [w["end_s"] for w in timeline if isinstance(w.get("end_s"), int | float)]
    scored = [[w["end_s"], w["frustration"], w["distress"]] for w in timeline
              if w.get("role") == "customer" and isinstance(w.get("end_s"), int | float)
              and w.get("frustration") is not None]
    return scored[-points:], max(ends, default=0.0)


async def store_calls(client, n: int) -> list[bytes]:
    messages = []
    for k in range(n):
        call_id = f"call-{k}"
        start = CallEvent(id=schema.new_id(), type="call_started", call_id=call_id,
                          roles=("customer", "agent"), sample_rate=8000, encoding="mulaw",
                          protocol="twilio", metadata={"agent": f"agent {k % 40}",
                                                       "queue": "billing"})
        state = {"start": schema.dumps(start), "last:customer": window(call_id, "customer"),
                 "last:agent": window(call_id, "agent")}
        if k % 5 == 0:
            state["alert:customer:frustration"] = json.dumps({
                "v": 1, "type": "alert", "id": schema.new_id(), "call_id": call_id,
                "role": "customer", "kind": "frustration", "state": "raised", "score": 0.8,
                "threshold": 0.45, "window_index": 4, "call_time_s": 7.0, "ts": time.time()})
        await client.zadd(schema.LIVE_CALLS_KEY, {call_id: start.ts})
        await client.hset(schema.call_state_key(call_id), mapping=state)
        messages += [v.encode() for v in state.values()]
    return messages


def reencoded(value: bytes):
    data = json.loads(value)
    json.dumps(data, ensure_ascii=False, allow_nan=False).encode("utf-8")
    return data


async def reload_figures(client, ids: list[str], windows: int) -> dict:
    """The grid's reload both ways, ``ROUNDS`` times each, alternating."""
    for call_id in ids:
        await client.rpush(schema.call_timeline_key(call_id),
                           *[window(call_id, ("agent", "customer")[i % 2], i // 2)
                             for i in range(windows)])
    rows = [await client.lrange(schema.call_timeline_key(call_id), -windows, -1)
            for call_id in ids]
    per_call, together, sizes = [], [], {}
    decoded, matched = [], []
    for _ in range(ROUNDS):
        t = time.perf_counter()
        listed = await store.live_calls(client)
        tails = [await store.timeline_json(client, c["call_id"], tail=windows) for c in listed]
        per_call.append(time.perf_counter() - t)
        t = time.perf_counter()
        compact = await store.live_calls(client, history=windows // 2)
        together.append(time.perf_counter() - t)
        sizes = {"per_call_mb": round((len(json.dumps(listed)) + sum(
                     len(tail) for tail in tails)) / 1e6, 2),
                 "history_mb": round(len(json.dumps(compact)) / 1e6, 2)}
        # The sparklines alone, from the same rows: decoded whole against matched.
        t = time.perf_counter()
        slow = [sparkline_decoding(r, windows // 2) for r in rows]
        decoded.append(time.perf_counter() - t)
        t = time.perf_counter()
        fast = [store.sparkline(r, windows // 2) for r in rows]
        matched.append(time.perf_counter() - t)
        assert slow == fast
    return {"windows_per_call": windows, "requests_per_call": len(ids) + 1,
            "per_call_ms": round(1000 * statistics.median(per_call), 1),
            "history_ms": round(1000 * statistics.median(together), 1),
            "sparklines_decoded_ms": round(1000 * statistics.median(decoded), 1),
            "sparklines_matched_ms": round(1000 * statistics.median(matched), 1), **sizes}


async def measure(url: str, n: int, reload_windows: int = 0) -> dict:
    client = redis_client.connect(url)
    try:
        messages = await store_calls(client, n)
        ids = [c.decode() for c in await client.zrange(schema.LIVE_CALLS_KEY, 0, -1)]
        times: dict[str, list[float]] = {"call_by_call": [], "live_calls": [],
                                         "decode_reencoding": [], "decode": []}
        for _ in range(ROUNDS):
            t = time.perf_counter()
            one_by_one = [await store.call_summary(client, i) for i in ids]
            times["call_by_call"].append(time.perf_counter() - t)
            t = time.perf_counter()
            listed = await store.live_calls(client)
            times["live_calls"].append(time.perf_counter() - t)
            assert len(listed) == len(one_by_one) == n
            t = time.perf_counter()
            slow = [reencoded(m) for m in messages]
            times["decode_reencoding"].append(time.perf_counter() - t)
            t = time.perf_counter()
            fast = [store._decode(m) for m in messages]
            times["decode"].append(time.perf_counter() - t)
            assert slow == fast
        reload = await reload_figures(client, ids, reload_windows) if reload_windows else None
        await client.flushall()
    finally:
        await client.aclose()
    ms = {k: round(1000 * statistics.median(v), 1) for k, v in times.items()}
    row = {"calls": n, "messages": len(messages), "median_ms": ms,
           "listing_ratio": round(ms["call_by_call"] / ms["live_calls"], 2),
           "decode_ratio": round(ms["decode_reencoding"] / ms["decode"], 2)}
    return {**row, "reload": reload} if reload else row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", default="100,2000")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--reload", type=int, default=0, metavar="WINDOWS",
                        help="also time the grid's reload with this many windows per call")
    parser.add_argument("--kinds", default="standalone,cluster")
    args = parser.parse_args()
    report = {}
    for kind in args.kinds.split(","):
        with tempfile.TemporaryDirectory() as folder:
            server = (EmbeddedRedis(data_dir=Path(folder), persist=False) if kind == "standalone"
                      else EmbeddedCluster(data_dir=Path(folder)))
            with server:
                for n in map(int, args.calls.split(",")):
                    row = asyncio.run(measure(server.url, n, args.reload))
                    report[f"{kind}_{n}"] = row
                    print(f"{kind:10s} {n:5d} calls: call by call {row['median_ms']['call_by_call']}"
                          f" ms, live_calls {row['median_ms']['live_calls']} ms "
                          f"({row['listing_ratio']}x); decoding {row['messages']} messages "
                          f"{row['median_ms']['decode_reencoding']} -> "
                          f"{row['median_ms']['decode']} ms ({row['decode_ratio']}x)")
                    if "reload" in row:
                        r = row["reload"]
                        print(f"{'':10s} reload, {r['windows_per_call']} windows a call: "
                              f"call by call {r['per_call_ms']} ms ({r['requests_per_call']} "
                              f"requests, {r['per_call_mb']} MB), history {r['history_ms']} ms "
                              f"(1 request, {r['history_mb']} MB); its sparklines "
                              f"{r['sparklines_decoded_ms']} ms decoded whole, "
                              f"{r['sparklines_matched_ms']} ms matched")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
