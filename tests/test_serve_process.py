"""``callmon serve`` as a real process: start-up, and a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import numpy as np
import redis
from websockets.asyncio.client import connect

from streamer import schema
from streamer.bench import ServerProcess
from streamer.client import encode
from streamer.redis_server import free_port

from .streaming import actor_clips


def test_sigterm_ends_live_calls_and_flushes(redis_server, ravdess_dir, held_out_actors):
    audio = np.concatenate(actor_clips(ravdess_dir, held_out_actors[0], "angry", 2))
    port = free_port()
    server = ServerProcess(redis_url=redis_server.url, port=port)
    try:
        server.wait_ready()

        async def call() -> tuple[list[dict], int | None]:
            got: list[dict] = []
            async with connect(f"ws://127.0.0.1:{port}/v1/stream") as ws:
                await ws.send(json.dumps({"type": "start", "call_id": "term-1",
                                          "sample_rate": 16000}))
                for i in range(0, len(audio), 1600):
                    await ws.send(encode(audio[i : i + 1600, None], "pcm_s16le"))
                async for message in ws:
                    data = json.loads(message)
                    got.append(data)
                    if data["type"] == "window" and data["window_index"] == 1:
                        server.process.send_signal(signal.SIGTERM)
                return got, ws.close_code

        started = time.monotonic()
        messages, close_code = asyncio.run(asyncio.wait_for(call(), 60))
        exit_code = server.process.wait(timeout=15)
        took = time.monotonic() - started
    finally:
        server.stop()
    assert exit_code == 0 and took < 30
    assert messages[-1]["type"] == "ended" and messages[-1]["reason"] == "shutdown"
    assert close_code == 1001  # going away
    client = redis.Redis.from_url(redis_server.url)
    log = [json.loads(f[b"data"]) for _, f in client.xrange(schema.ALERTS_STREAM)]
    assert [e["type"] for e in log if e["call_id"] == "term-1"][-1] == "call_ended"
    assert log[-1]["reason"] == "shutdown"
    assert client.zcard(schema.LIVE_CALLS_KEY) == 0  # nothing left marked live
