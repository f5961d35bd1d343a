"""``callmon serve`` as a real process: start-up, and a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request

import numpy as np
import redis
from websockets.asyncio.client import connect

from streamer import schema
from streamer.tools.bench import ServerProcess
from streamer.tools.client import encode
from streamer.tools.redis_server import free_port

from .streaming import actor_clips, wait_for


def test_sigterm_ends_live_calls_and_flushes(redis_server, ravdess_dir, call_actors):
    audio = np.concatenate(actor_clips(ravdess_dir, call_actors[0], "angry", 2))
    port = free_port()
    server = ServerProcess(redis_url=redis_server.url, port=port)
    try:
        server.wait_ready()
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz").read())
        assert health["event_loop"] == "uvloop"  # a dependency on Linux, used when installed

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
                    # The audio went in faster than real time, so some windows may be dropped
                    # by design: terminate at the first result, whichever window it is.
                    if data["type"] == "window" and sum(m["type"] == "window" for m in got) == 1:
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


def test_serve_with_the_base_model(redis_server, ravdess_dir, call_actors):
    """``serve --model whisper-base`` (here CALLMON_MODEL_PATH) scores calls with the shipped
    Whisper base model and its own alert rules."""
    audio = np.concatenate(actor_clips(ravdess_dir, call_actors[0], "angry", 2))
    port = free_port()
    server = ServerProcess(redis_url=redis_server.url, port=port,
                           extra_env={"CALLMON_MODEL_PATH": "whisper-base"})
    try:
        server.wait_ready()
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz").read())

        async def call() -> list[dict]:
            async with connect(f"ws://127.0.0.1:{port}/v1/stream") as ws:
                await ws.send(json.dumps({"type": "start", "call_id": "base-1",
                                          "sample_rate": 16000}))
                for i in range(0, len(audio), 1600):
                    await ws.send(encode(audio[i : i + 1600, None], "pcm_s16le"))
                await ws.send(json.dumps({"type": "stop"}))
                return [json.loads(m) async for m in ws]

        messages = asyncio.run(asyncio.wait_for(call(), 60))
    finally:
        server.stop()
    assert health["model"]["backbone"] == "whisper-base" and health["model"]["variant"] == "int8"
    scored = [m for m in messages if m["type"] == "window" and m["scores"]]
    assert scored and set(scored[0]["scores"]) == {"neutral", "happy", "sad", "angry", "fearful"}
    assert messages[-1]["type"] == "ended"


def test_killed_node_calls_are_marked_lost(shipped_model, redis_server, ravdess_dir,
                                           call_actors):
    """SIGKILL a serve process mid-call: a surviving node ends the call as ``lost`` within
    the heartbeat TTL plus two reaper passes, instead of leaving it live forever."""
    from .streaming import ServiceThread

    audio = np.concatenate(actor_clips(ravdess_dir, call_actors[0], "neutral", 2))
    port = free_port()
    fast = {"CALLMON_HEARTBEAT_S": "0.5", "CALLMON_HEARTBEAT_TTL_S": "2"}
    server = ServerProcess(redis_url=redis_server.url, port=port, extra_env=fast)
    client = redis.Redis.from_url(redis_server.url)
    try:
        server.wait_ready()

        async def call_then_crash() -> None:
            async with connect(f"ws://127.0.0.1:{port}/v1/stream") as ws:
                await ws.send(json.dumps({"type": "start", "call_id": "doomed",
                                          "sample_rate": 16000}))
                await ws.send(encode(audio[:32000, None], "pcm_s16le"))
                assert json.loads(await ws.recv())["type"] == "started"
                await wait_for(lambda: client.zrange(schema.LIVE_CALLS_KEY, 0, -1) == [b"doomed"],
                               5, "the call to be live in Redis")
                server.process.kill()

        asyncio.run(call_then_crash())
        server.process.wait(10)
        assert client.zrange(schema.LIVE_CALLS_KEY, 0, -1) == [b"doomed"]
        killed_at = time.monotonic()
        with ServiceThread(shipped_model, redis_server.url, heartbeat_s=0.5,
                           heartbeat_ttl_s=2) as survivor:
            deadline = time.monotonic() + 20
            while client.zcard(schema.LIVE_CALLS_KEY) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert survivor.service.monitor.calls == {}
        took = time.monotonic() - killed_at
    finally:
        server.stop()
    assert client.zcard(schema.LIVE_CALLS_KEY) == 0, "the dead node's call is still live"
    assert took < 10
    log = [json.loads(f[b"data"]) for _, f in client.xrange(schema.ALERTS_STREAM)]
    ended = [e for e in log if e["type"] == "call_ended" and e["call_id"] == "doomed"]
    assert len(ended) == 1 and ended[0]["reason"] == "lost"


def test_serve_beyond_loopback_needs_an_ingest_token(tmp_path) -> None:
    """``serve --host 0.0.0.0`` used to open ingest to the network without a word."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from streamer.service import check_exposure
    from streamer.settings import Settings

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "CALLMON_SUPERVISOR_PASSWORD": "pw"}
    env.pop("CALLMON_INGEST_TOKEN", None)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(root / "callmon_cli.py"), "serve", "--host",
                           "0.0.0.0", "--port", str(free_port())], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "without a token" in proc.stderr and "CALLMON_INGEST_TOKEN" in proc.stderr
    assert "--insecure-ingest" in proc.stderr and time.monotonic() - started < 30
    check_exposure(Settings(host="0.0.0.0", ingest_token="t"))
    check_exposure(Settings(host="0.0.0.0", insecure_ingest=True))
    check_exposure(Settings(host="::1"))


def test_alerts_finds_the_embedded_redis_of_a_local_serve(tmp_path, ravdess_dir, call_actors):
    """``callmon alerts`` with no URL follows the embedded Redis of a ``callmon serve`` on
    this machine (its runtime file), with wall-clock times; the file goes with the server."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "CALLMON_RUNTIME_DIR": str(tmp_path / "run")}
    env.pop("REDIS_URL", None)
    port, dport = free_port(), free_port()
    serve = subprocess.Popen([sys.executable, str(root / "callmon_cli.py"), "serve", "--port",
                              str(port), "--dashboard-port", str(dport)], env=env, cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runtime = tmp_path / "run" / "callmon" / "serve.json"
    try:
        deadline = time.monotonic() + 60
        while not runtime.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        info = json.loads(runtime.read_text())
        assert runtime.stat().st_mode & 0o077 == 0  # its Redis URL may hold a password
        assert info["pid"] == serve.pid and info["ingest"] == f"ws://127.0.0.1:{port}"
        audio = np.concatenate(actor_clips(ravdess_dir, call_actors[0], "neutral", 1))
        sf_path = tmp_path / "c.wav"
        import soundfile as sf

        sf.write(sf_path, audio, 16_000)
        done = subprocess.run([sys.executable, str(root / "callmon_cli.py"), "stream",
                               str(sf_path), "--url", f"ws://127.0.0.1:{port}", "--speed", "8",
                               "--call-id", "found-me"], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        alerts = subprocess.Popen([sys.executable, str(root / "callmon_cli.py"), "alerts",
                                   "--since", "0"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        time.sleep(4)
        alerts.terminate()
        out, err = alerts.communicate(timeout=10)
        assert "call_started call=found-me" in out and "call_ended call=found-me" in out, err
        assert time.strftime("%Y-%m-%d") in out
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
    assert not runtime.exists()


def test_bench_load_says_why_calls_were_refused(ravdess_dir) -> None:
    """``bench load`` counts calls that did not end as refused, and says why: here a server
    allowed two live calls, asked for four at once, refuses two with its ``at_capacity``
    error (an H200 run refused thousands of calls and its JSON could not say why)."""
    from streamer.tools.bench import bench_load

    [result] = bench_load(calls=[4], duration_s=4.0, frame_ms=100, data=ravdess_dir,
                          find_max=False, env={"CALLMON_MAX_CALLS": "2"})
    assert result.refused == 2
    assert result.refusals == {"server error at_capacity": 2}
    assert result.row()["refusals"] == {"server error at_capacity": 2}
