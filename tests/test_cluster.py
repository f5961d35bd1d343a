"""Two streamer nodes and one dashboard, as separate processes, on a real 3-master Redis
Cluster started here: calls on both nodes are visible, alerts are delivered, and a
killed node's call is marked lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
import urllib.request

import httpx
import numpy as np
import pytest

from streamer import schema
from streamer.alerts_feed import follow_alerts
from streamer.redis_client import connect
from streamer.tools.bench import ServerProcess
from streamer.tools.client import stream_native
from streamer.tools.redis_server import EmbeddedCluster, free_port

from .streaming import actor_clips

FAST_BEAT = {"CALLMON_HEARTBEAT_S": "0.5", "CALLMON_HEARTBEAT_TTL_S": "2"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with EmbeddedCluster(masters=3, data_dir=tmp_path_factory.mktemp("cluster")) as c:
        yield c


class DashboardProcess:
    def __init__(self, redis_url: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "callmon_cli", "dashboard", "--redis-url", redis_url,
             "--dashboard-port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**__import__("os").environ, **FAST_BEAT})
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("dashboard did not start")

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(15)


def cluster_log(url: str) -> list[dict]:
    async def read():
        client = connect(url)
        try:
            return [json.loads(f[b"data"]) for _, f in
                    await client.xrange(schema.ALERTS_STREAM)]
        finally:
            await client.aclose()

    return asyncio.run(read())


def test_two_nodes_one_dashboard_on_a_cluster(cluster, ravdess_dir, call_actors):
    angry = np.concatenate(actor_clips(ravdess_dir, call_actors[2], "angry", 4,
                                       intensity="02"))
    calm = np.concatenate(actor_clips(ravdess_dir, call_actors[0], "calm", 4))
    nodes = [ServerProcess(redis_url=cluster.url, port=free_port(),
                           extra_env={**FAST_BEAT, "CALLMON_NODE": name})
             for name in ("node-a", "node-b")]
    dashboard = None
    try:
        for node in nodes:
            node.wait_ready()
        dashboard = DashboardProcess(cluster.url)
        seen_live: dict[str, str] = {}
        sse: list[dict] = []
        stop_sse = threading.Event()

        def read_sse() -> None:
            with httpx.stream("GET", dashboard.url + "/api/v1/events", timeout=None) as r:
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        sse.append(json.loads(line[5:]))
                    if stop_sse.is_set():
                        return

        reader = threading.Thread(target=read_sse, daemon=True)
        reader.start()
        time.sleep(1.0)

        async def both_calls():
            async def watch():
                while len(seen_live) < 2:
                    for call in await asyncio.to_thread(dashboard.get, "/api/v1/calls"):
                        seen_live[call["call_id"]] = call.get("node") or call["start"]["node"]
                    await asyncio.sleep(0.2)

            watcher = asyncio.create_task(watch())
            outcomes = await asyncio.gather(
                stream_native(f"ws://127.0.0.1:{nodes[0].port}/v1/stream", angry[:, None],
                              rate=16_000, call_id="on-a", speed=3),
                stream_native(f"ws://127.0.0.1:{nodes[1].port}/v1/stream", calm[:, None],
                              rate=16_000, call_id="on-b", speed=3))
            await asyncio.wait_for(watcher, 5)
            return outcomes

        on_a, on_b = asyncio.run(both_calls())
        time.sleep(1.0)
        stop_sse.set()

        # A consumer of the alert log on the cluster sees both calls end.
        followed: list[dict] = []

        async def follow():
            stop = asyncio.Event()

            def collect(data: dict) -> None:
                followed.append(data)
                if sum(d["type"] == "call_ended" for d in followed) == 2:
                    stop.set()

            await asyncio.wait_for(follow_alerts(cluster.url, since="0", on_message=collect,
                                                 stop=stop, block_ms=200), 15)

        asyncio.run(follow())

        # Kill node A in the middle of a call: the call is marked lost.
        async def doomed():
            from websockets.asyncio.client import connect as ws_connect

            from streamer.tools.client import encode

            async with ws_connect(f"ws://127.0.0.1:{nodes[0].port}/v1/stream") as ws:
                await ws.send(json.dumps({"type": "start", "call_id": "doomed",
                                          "sample_rate": 16000}))
                await ws.send(encode(calm[:32_000, None], "pcm_s16le"))
                await ws.recv()
                deadline = time.monotonic() + 10
                while "doomed" not in {c["call_id"] for c in dashboard.get("/api/v1/calls")}:
                    assert time.monotonic() < deadline, "doomed call never visible"
                    await asyncio.sleep(0.1)
                nodes[0].process.kill()

        asyncio.run(doomed())
        killed_at = time.monotonic()
        while "doomed" in {c["call_id"] for c in dashboard.get("/api/v1/calls")}:
            assert time.monotonic() - killed_at < 15, "the killed node's call is still live"
            time.sleep(0.2)
        lost_after = time.monotonic() - killed_at
        log = cluster_log(cluster.url)
    finally:
        for node in nodes:
            node.stop()
        if dashboard is not None:
            dashboard.stop()

    assert seen_live == {"on-a": "node-a", "on-b": "node-b"}
    assert on_a.ended["reason"] == on_b.ended["reason"] == "stop"
    assert any(a["state"] == "raised" for a in on_a.alerts), "the angry call raised no alert"
    assert not on_b.alerts
    windows = {e["call_id"] for e in sse if e.get("type") == "window"}
    assert {"on-a", "on-b"} <= windows  # sharded channels relayed from both nodes
    sse_alerts = {e["id"] for e in sse if e.get("type") == "alert"}
    assert {a["id"] for a in on_a.alerts} <= sse_alerts
    log_alerts = {e["id"] for e in log if e["type"] == "alert"}
    assert {a["id"] for a in on_a.alerts} <= log_alerts
    starts = {e["call_id"]: e["node"] for e in followed if e["type"] == "call_started"}
    assert starts == {"on-a": "node-a", "on-b": "node-b"}
    ended = [e for e in log if e["type"] == "call_ended" and e["call_id"] == "doomed"]
    assert len(ended) == 1 and ended[0]["reason"] == "lost" and ended[0]["node"] == "node-a"
    assert lost_after < 10


def test_a_call_id_is_live_on_one_node_only(shipped_model, redis_server, ravdess_dir,
                                            call_actors):
    """Two nodes on one Redis: node B used to accept a call id live on node A, and when B's
    call ended the dashboard hid A's live call. Ids are claimed cluster-wide now."""
    import asyncio

    from streamer.tools.client import stream_native

    from .streaming import actor_clips, running_service, wait_for
    from .test_stream_bad_input import START, refused

    audio = np.concatenate(actor_clips(ravdess_dir, call_actors[0], "calm", 4))

    async def main():
        async with running_service(shipped_model, redis_server.url, node="node-a") as a, \
                running_service(shipped_model, redis_server.url, node="node-b") as b:
            call = asyncio.create_task(stream_native(
                f"ws://127.0.0.1:{a.ingest.port}/v1/stream", audio[:, None], rate=16_000,
                call_id="dup-x", speed=2.0))
            await wait_for(lambda: "dup-x" in a.monitor.calls, 10, "the call on node A")
            answers, code = await refused(f"ws://127.0.0.1:{b.ingest.port}/v1/stream",
                                          {**START, "call_id": "dup-x"})
            live_on_b = dict(b.monitor.calls)
            outcome = await call
            # Ended on A: the id is free for any node again.
            again, again_code = await refused(f"ws://127.0.0.1:{b.ingest.port}/v1/stream",
                                              {**START, "call_id": "dup-x"}, {"type": "stop"})
            return answers, code, live_on_b, outcome, again_code

    answers, code, live_on_b, outcome, again_code = asyncio.run(main())
    errors = [x for x in answers if x["type"] == "error"]
    assert code == 1008 and errors[-1]["code"] == "duplicate_call_id"
    assert "node-a" in errors[-1]["message"] and live_on_b == {}
    assert outcome.close_code == 1000 and outcome.ended["reason"] == "stop"
    assert again_code == 1000


def test_the_cluster_relay_goes_on_past_an_unreadable_event(cluster):
    """On a cluster the dashboard's relay reads each call event to follow the call's shard
    channel: one message on ``callmon:alerts`` that is not a JSON object (another
    publisher's, a truncated write) raised out of the relay, which restarted a second later
    and lost what was published meanwhile. It is passed on like any other now. And the
    relay is live when the first browser's stream starts: on a client that had sent no
    command yet it failed (no slot map), silently, until another request made one."""
    from dashboard.hub import LiveHub
    from streamer import redis_client, schema

    async def scenario() -> None:
        client = redis_client.connect(cluster.url)
        hub = LiveHub(client)
        try:
            sub = await hub.subscribe()
            assert hub.connected
            started = json.dumps({"v": 1, "type": "call_started", "id": "e1",
                                  "call_id": "after-garbage"})
            for message in ("not json", "[1, 2]", started):
                await client.spublish(schema.ALERTS_CHANNEL, message)
            heard: list[str] = []
            while started not in heard:
                taken = await asyncio.wait_for(sub.take(), 5)
                assert taken is not None
                heard += taken
            assert heard == ["not json", "[1, 2]", started]
            # ...and it follows the call that started after them (once it has subscribed
            # to the call's channel, which it does after passing the event on).
            for _ in range(25):
                await client.spublish(schema.call_channel("after-garbage"), "w1")
                with contextlib.suppress(TimeoutError):
                    if "w1" in await asyncio.wait_for(sub.take(), 0.2):
                        break
            else:
                raise AssertionError("the relay does not follow the call")
        finally:
            await hub.stop()
            await client.aclose()

    asyncio.run(scenario())
