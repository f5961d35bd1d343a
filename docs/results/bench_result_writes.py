"""What one window result's Redis writes cost the event loop: the five commands the publisher
sent before (PUBLISH, RPUSH, LTRIM, EXPIRE, HSET) against its one script
(``streamer.publisher.RESULT_SCRIPT``), and what each costs the Redis server.

``PYTHONPATH=. python docs/results/bench_result_writes.py [--rounds 3] [--out FILE]`` starts an
embedded Redis, then writes batches of 50 results (one per call, as the publisher's
pipelines hold them) both ways in turn: the client's CPU per result (redis-py packing the
commands and parsing the replies, what the node's event loop pays) and the server's
(``INFO cpu``), best of each round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

from streamer import schema
from streamer.publisher import RESULT_SCRIPT, PublisherConfig
from streamer.schema import WindowResult, dumps
from streamer.tools.redis_server import EmbeddedRedis

BATCHES, PER_BATCH = 200, 50


def five_commands(pipe, call_id: str, payload: str, cfg: PublisherConfig) -> None:
    """The publisher's writes of one result before the script (its code at 03ea366)."""
    timeline = schema.call_timeline_key(call_id)
    pipe.publish(schema.call_channel(call_id), payload)
    pipe.rpush(timeline, payload)
    pipe.ltrim(timeline, -cfg.timeline_max, -1)
    pipe.expire(timeline, cfg.ended_ttl_s)
    pipe.hset(schema.call_state_key(call_id), mapping={"last:customer": payload})


def one_script(pipe, call_id: str, payload: str, cfg: PublisherConfig) -> None:
    """The publisher's writes of one result now (``RedisPublisher._write``)."""
    pipe.eval(RESULT_SCRIPT, 2, schema.call_timeline_key(call_id),
              schema.call_state_key(call_id), schema.call_channel(call_id), payload,
              "last:customer", cfg.timeline_max, cfg.ended_ttl_s, "PUBLISH")


async def server_cpu_s(client) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def run(url: str, rounds: int) -> dict:
    client = aioredis.Redis.from_url(url, socket_timeout=2.0)
    cfg = PublisherConfig()
    payload = dumps(WindowResult(
        call_id="c-0", role="customer", channel=0, window_index=5, start_s=2.0, end_s=5.0,
        speech=True, speech_ratio=0.8,
        scores={"neutral": 0.1, "happy": 0.2, "angry": 0.3, "sad": 0.2, "fearful": 0.2},
        frustration=0.3, distress=0.2, latency_ms=40.1, node="n"))
    best: dict[str, dict[str, float]] = {}
    for _ in range(rounds):
        for name, write in (("five commands", five_commands), ("one script", one_script)):
            n = BATCHES * PER_BATCH
            server0, client0 = await server_cpu_s(client), time.process_time()
            for _ in range(BATCHES):
                pipe = client.pipeline(transaction=False)
                for i in range(PER_BATCH):
                    write(pipe, f"c-{i}", payload, cfg)
                await pipe.execute(raise_on_error=False)
            took = {"client_us_per_result": (time.process_time() - client0) / n * 1e6,
                    "server_us_per_result": (await server_cpu_s(client) - server0) / n * 1e6}
            best[name] = {k: round(min(v, best.get(name, {}).get(k, v)), 1)
                          for k, v in took.items()}
    await client.aclose()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(data_dir=Path(tmp), persist=False)
        server.start()
        try:
            best = asyncio.run(run(server.url, args.rounds))
        finally:
            server.close()
    report = {"results_per_batch": PER_BATCH, "batches": BATCHES, "rounds": args.rounds,
              **best, "client_ratio": round(best["one script"]["client_us_per_result"]
                                            / best["five commands"]["client_us_per_result"], 2)}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
