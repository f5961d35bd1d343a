"""End to end on real components: the ingest server on loopback, the shipped model, a real
Redis server process, and calls built from held-out RAVDESS actors."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from streamer import schema
from streamer.alerts_feed import follow_alerts
from streamer.tools.client import stream_native, stream_twilio

from .streaming import calm_then_angry, running_service, wait_for

SPEED = 8.0  # stream at 8x real time: the server keeps up, the test stays short
MAX_DELAY_S = 8.0  # anger onset → alert, in call time


def stream_entries(url: str) -> list[dict]:
    client = redis.Redis.from_url(url)
    entries = [json.loads(f[b"data"]) for _, f in client.xrange(schema.ALERTS_STREAM)]
    client.close()
    return entries


def assert_frustration_alert(alerts: list[dict], onset: float, role: str = "customer") -> dict:
    raised = [a for a in alerts if a["kind"] == "frustration" and a["state"] == "raised"]
    assert raised, f"no frustration alert; got {alerts}"
    early = [a for a in raised if a["call_time_s"] <= onset]
    assert not early, f"alert during the calm part (anger starts at {onset:.1f} s): {early}"
    first = raised[0]
    assert first["role"] == role
    assert first["call_time_s"] - onset <= MAX_DELAY_S, (
        f"alert {first['call_time_s'] - onset:.1f} s after the anger started")
    return first


def test_calm_customer_turns_angry(shipped_model, call_actors, ravdess_dir, redis_server):
    audio, onset = calm_then_angry(ravdess_dir, call_actors[0])

    async def main():
        async with running_service(shipped_model, redis_server.url) as service:
            sub = aioredis.Redis.from_url(redis_server.url).pubsub()
            await sub.subscribe(schema.call_channel("calm-angry"), schema.ALERTS_CHANNEL)
            outcome = await stream_native(
                f"ws://127.0.0.1:{service.ingest.port}/v1/stream", audio[:, None], rate=16_000,
                call_id="calm-angry", speed=SPEED, metadata={"agent": "Ann"})
            await service.publisher.flush(5)
            published = []
            while (msg := await sub.get_message(timeout=0.5)) is not None:
                if msg["type"] == "message":
                    published.append(json.loads(msg["data"]))
            await sub.aclose()
            state = await service.redis.hgetall(schema.call_state_key("calm-angry"))
            live = await service.redis.zrange(schema.LIVE_CALLS_KEY, 0, -1)
            return outcome, published, state, live

    outcome, published, state, live = asyncio.run(main())
    assert outcome.close_code == 1000 and not outcome.errors
    assert outcome.started["labels"] == list(shipped_model.labels)
    first = assert_frustration_alert(outcome.alerts, onset)
    n_windows = int((len(audio) / 16_000 - 3) // 1) + 1
    assert outcome.ended["windows"] >= n_windows and outcome.ended["dropped"] == 0
    assert outcome.ended["alerts_raised"] >= 1
    # The same results reached Redis pub/sub, the alert log and the call's state.
    windows = [m for m in published if m.get("type") == "window"]
    assert len(windows) == len(outcome.windows) and all(m["v"] == 1 for m in windows)
    log = stream_entries(redis_server.url)
    assert [e["type"] for e in log][0] == "call_started" and log[-1]["type"] == "call_ended"
    assert first["id"] in {e.get("id") for e in log}
    assert log[0]["metadata"] == {"agent": "Ann"}
    assert b"end" in state and b"last:customer" in state
    assert live == []  # ended calls leave the live set


def test_twilio_endpoint_two_tracks_at_8k(shipped_model, call_actors, ravdess_dir,
                                         redis_server):
    import soxr

    # The shipped model recognises actor 18's strong anger late on an 8 kHz line (about
    # 15 s after it starts; see the model card's per-actor limits), so the angry customer
    # here is the third held-out actor and the second plays the agent.
    customer, onset = calm_then_angry(ravdess_dir, call_actors[2])
    agent, _ = calm_then_angry(ravdess_dir, call_actors[1])
    agent = agent[: len(customer)]
    agent = np.pad(agent, (0, len(customer) - len(agent)))
    stereo16 = np.stack([customer, agent], axis=1)
    stereo8 = soxr.resample(stereo16, 16_000, 8_000).astype(np.float32)

    async def main():
        async with running_service(shipped_model, redis_server.url) as service:
            return await stream_twilio(f"ws://127.0.0.1:{service.ingest.port}/v1/twilio",
                                       stereo8, call_id="CAtwilio", speed=SPEED)

    outcome = asyncio.run(main())
    assert outcome.close_code == 1000 and not outcome.errors
    roles = {w["role"] for w in outcome.windows}
    assert roles == {"customer", "agent"}
    assert_frustration_alert(outcome.alerts, onset)
    assert not [a for a in outcome.alerts if a["role"] == "agent"]  # agents are scored, not alerted
    log = stream_entries(redis_server.url)
    assert log[0]["type"] == "call_started" and log[0]["protocol"] == "twilio"
    assert log[0]["roles"] == ["customer", "agent"]


def test_a_ringing_call_is_not_scored_until_someone_speaks(shipped_model, call_actors,
                                                          ravdess_dir, redis_server):
    """An outbound call rings (a UK ringback tone, then a US busy tone on a retry) before the
    customer answers, over Twilio at 8 kHz: the tones are no voice, so no window of them is
    scored and no distress alert is raised on them (before the voice gate's tone check the
    shipped model raised one 8 s into the ringing); the customer is scored from the first
    word and their anger is alerted as on any call."""
    import soxr

    from streamer.tools.line_sounds import cadenced_tone

    ringing = np.concatenate([cadenced_tone("ringback_uk", 12.0), cadenced_tone("busy_us", 8.0)])
    speech, onset = calm_then_angry(ravdess_dir, call_actors[2])
    audio8 = soxr.resample(np.concatenate([ringing, speech]), 16_000, 8_000).astype(np.float32)

    async def main():
        async with running_service(shipped_model, redis_server.url) as service:
            return await stream_twilio(f"ws://127.0.0.1:{service.ingest.port}/v1/twilio",
                                       audio8[:, None], call_id="CAringing", speed=SPEED)

    outcome = asyncio.run(main())
    assert outcome.close_code == 1000 and not outcome.errors
    rang = len(ringing) / 16_000
    while_ringing = [w for w in outcome.windows if w["end_s"] <= rang]
    assert len(while_ringing) >= 15 and not [w for w in while_ringing if w["speech"]]
    assert [w for w in outcome.windows if w["start_s"] >= rang + 1 and w["speech"]]
    assert_frustration_alert(outcome.alerts, rang + onset)
    assert not [a for a in outcome.alerts if a["call_time_s"] <= rang + 3]


def test_redis_killed_and_restarted_mid_call(shipped_model, call_actors, ravdess_dir,
                                             redis_server):
    audio, onset = calm_then_angry(ravdess_dir, call_actors[3])

    async def main():
        async with running_service(shipped_model, redis_server.url) as service:
            health = []

            def on_message(data: dict) -> None:
                # Kill Redis a few windows into the calm part; the anger comes during the outage.
                if data.get("type") == "window" and data["window_index"] == 3:
                    redis_server.kill()

            task = asyncio.create_task(stream_native(
                f"ws://127.0.0.1:{service.ingest.port}/v1/stream", audio[:, None], rate=16_000,
                call_id="outage", speed=SPEED, on_message=on_message))
            await wait_for(lambda: not service.publisher.connected, 30, "the publisher to notice")
            health.append(service.health())
            await wait_for(lambda: service.monitor.stats.alerts_raised > 0 or task.done(), 60,
                           "an alert during the outage")
            redis_server.start()  # same port, same data folder
            outcome = await task
            await wait_for(lambda: service.publisher.connected and not service.publisher.undelivered,
                           30, "the held alerts to be delivered")
            health.append(service.health())
            return outcome, health

    outcome, health = asyncio.run(main())
    assert health[0]["status"] == "degraded" and health[0]["redis"]["connected"] is False
    assert health[1]["status"] == "ok"
    raised = assert_frustration_alert(outcome.alerts, onset)
    log = stream_entries(redis_server.url)
    ids = [e["id"] for e in log]
    socket_ids = [a["id"] for a in outcome.alerts]
    assert raised["id"] in ids
    assert set(socket_ids) <= set(ids)  # every alert the call saw reached the log
    assert ids[0] == log[0]["id"] and log[0]["type"] == "call_started"
    assert log[-1]["type"] == "call_ended" and log[-1]["call_id"] == "outage"

    # A consumer that was away replays everything from the log, each id once.
    seen: list[dict] = []

    async def replay():
        stop = asyncio.Event()

        def collect(data: dict) -> None:
            seen.append(data)
            if data["type"] == "call_ended":
                stop.set()

        await asyncio.wait_for(follow_alerts(redis_server.url, since="0", on_message=collect,
                                             stop=stop, block_ms=200), 10)

    asyncio.run(replay())
    assert [d["id"] for d in seen] == list(dict.fromkeys(ids))


def test_stream_and_alerts_commands(shipped_model, call_actors, ravdess_dir, redis_server,
                                    tmp_path):
    """``callmon stream`` (native, stereo file → two roles; and Twilio mode) and
    ``callmon alerts --since 0`` as a user runs them."""
    import subprocess
    import sys

    import soundfile as sf

    from .streaming import ServiceThread, actor_clips

    customer = np.concatenate(actor_clips(ravdess_dir, call_actors[2], "angry", 3,
                                          intensity="02"))
    agent = np.concatenate(actor_clips(ravdess_dir, call_actors[0], "neutral", 3))
    n = min(len(customer), len(agent))
    path = tmp_path / "call.wav"
    sf.write(path, np.stack([customer[:n], agent[:n]], axis=1), 16_000)
    with ServiceThread(shipped_model, redis_server.url) as svc:
        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "callmon_cli", *args],
                                  capture_output=True, text=True, timeout=120)

        native = cli("stream", str(path), "--url", svc.ingest_url, "--speed", "8",
                     "--call-id", "cli-native", "--agent", "Ann", "--metadata", "queue=billing")
        twilio = cli("stream", str(path), "--url", svc.ingest_url, "--speed", "8",
                     "--protocol", "twilio", "--call-id", "cli-twilio", "--agent", "Bo")
        alerts = subprocess.run(
            [sys.executable, "-c",
             "import asyncio, json, sys\n"
             "from streamer.alerts_feed import follow_alerts\n"
             "stop = asyncio.Event(); n = 0\n"
             "def show(d):\n"
             "    global n\n"
             "    print(json.dumps(d)); n += d['type'] == 'call_ended'\n"
             "    if n == 2: stop.set()\n"
             f"asyncio.run(follow_alerts('{redis_server.url}', since='0', on_message=show,"
             " stop=stop, block_ms=200))\n"],
            capture_output=True, text=True, timeout=60)
        bad = cli("stream", str(tmp_path / "missing.wav"), "--url", svc.ingest_url)
    assert native.returncode == 0, native.stderr
    lines = native.stdout.splitlines()
    assert any("customer" in line and "angry" in line for line in lines)
    assert any(line.startswith("cli-native agent") for line in lines)
    assert twilio.returncode == 0, twilio.stderr
    assert any(line.startswith("cli-twilio customer") for line in twilio.stdout.splitlines())
    events = [json.loads(line) for line in alerts.stdout.splitlines()]
    started = [e for e in events if e["type"] == "call_started"]
    assert [e["call_id"] for e in started] == ["cli-native", "cli-twilio"]
    assert started[0]["metadata"] == {"agent": "Ann", "queue": "billing"}
    assert started[1]["metadata"]["agent"] == "Bo"
    assert bad.returncode != 0 and "missing.wav" in bad.stderr


class SlowModel:
    """The shipped model, made to take ``delay_s`` per batch (a busy inference worker)."""

    def __init__(self, model, delay_s: float) -> None:
        self._model = model
        self.delay_s = delay_s

    def __getattr__(self, name):
        return getattr(self._model, name)

    def run_windows(self, windows: np.ndarray) -> np.ndarray:
        import time

        time.sleep(self.delay_s)
        return self._model.run_windows(windows)


def test_silent_windows_wait_for_earlier_speech_and_alerts_end_with_the_call(
        shipped_model, call_actors, ravdess_dir, redis_server):
    """Two alert-engine defects, through the real server: a silent window used to be
    published before earlier speech windows were scored (carrying a stale smoothed score),
    and an alert still active at the end of a call was never cleared."""
    from .streaming import actor_clips

    angry = np.concatenate(actor_clips(ravdess_dir, call_actors[0], "angry", 4,
                                       intensity="02"))
    hush = (1e-5 * np.random.default_rng(1).standard_normal(16_000 * 6)).astype(np.float32)
    audio = np.concatenate([angry, hush])

    async def main():
        async with running_service(SlowModel(shipped_model, 0.3), redis_server.url,
                                   max_speed=64.0, max_window_age_s=60.0) as service:
            outcome = await stream_native(
                f"ws://127.0.0.1:{service.ingest.port}/v1/stream", audio[:, None], rate=16_000,
                call_id="ends-angry", speed=32.0)
            await service.publisher.flush(5)
            return outcome

    outcome = asyncio.run(main())
    indices = [w["window_index"] for w in outcome.windows]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    speech = [w for w in outcome.windows if w["speech"]]
    silent = [w for w in outcome.windows if not w["speech"]]
    assert speech and silent and outcome.ended["dropped"] == 0
    assert silent[0]["window_index"] > speech[-1]["window_index"]
    assert silent[0]["frustration"] == speech[-1]["frustration"]  # the score after all speech
    raised = [a for a in outcome.alerts if a["state"] == "raised"]
    assert any(a["kind"] == "frustration" for a in raised)
    log = stream_entries(redis_server.url)
    cleared = {e["raised_id"]: e for e in log if e.get("state") == "cleared"}
    assert {a["id"] for a in raised} <= set(cleared), "an alert outlived its call"
    assert {cleared[a["id"]]["reason"] for a in raised} == {"call_ended"}
    assert log[-1]["type"] == "call_ended"


def test_redis_restarted_empty_mid_call_gets_the_live_call_back(
        shipped_model, call_actors, ravdess_dir, tmp_path):
    """Redis restarted *without* its data mid-call: the call vanished from the live set and
    its state (404 even after it ended). On reconnect each node re-announces its live calls,
    and the dashboard API answers 503, not 500, while Redis is away."""
    import httpx

    from streamer.tools.redis_server import EmbeddedRedis

    from .streaming import ServiceThread, actor_clips

    server = EmbeddedRedis(data_dir=tmp_path / "r", persist=False)
    (tmp_path / "r").mkdir()
    server.start()
    audio = np.concatenate(actor_clips(ravdess_dir, call_actors[0], "calm", 8))
    seen: dict = {}
    try:
        with ServiceThread(shipped_model, server.url) as svc:
            call = svc.submit(stream_native(f"{svc.ingest_url}/v1/stream", audio[:, None],
                                            rate=16_000, call_id="amnesia", speed=2.0))
            http = httpx.Client(base_url=svc.http_url, timeout=10)
            deadline = time.monotonic() + 20
            while not http.get("/api/v1/calls").json() and time.monotonic() < deadline:
                time.sleep(0.1)
            server.kill()
            deadline = time.monotonic() + 20
            while svc.service.publisher.connected and time.monotonic() < deadline:
                time.sleep(0.1)
            seen["during"] = http.get("/api/v1/calls")
            server.start()  # same port, nothing kept
            deadline = time.monotonic() + 30
            while svc.service.publisher.reannounced == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            seen["after"] = http.get("/api/v1/calls").json()
            outcome = call.result(120)
            svc.run(svc.service.publisher.flush(10))
            seen["ended"] = http.get("/api/v1/calls/amnesia")
    finally:
        server.close()
    assert seen["during"].status_code == 503 and "Redis" in seen["during"].json()["detail"]
    assert [c["call_id"] for c in seen["after"]] == ["amnesia"]
    assert outcome.ended["reason"] == "stop"
    assert seen["ended"].status_code == 200 and seen["ended"].json()["end"]["reason"] == "stop"


def test_shipped_alert_rules_end_to_end(shipped_model, call_actors, ravdess_dir, redis_server):
    """The rules in the shipped card (not the tests' responsive ones) through the server:
    the server announces them on call_started, and a strongly angry caller is alerted."""
    from .streaming import RESPONSIVE, actor_clips

    calm = actor_clips(ravdess_dir, call_actors[2], "calm", 6)
    angry = actor_clips(ravdess_dir, call_actors[2], "angry", 8)
    audio = np.concatenate(calm + angry)
    onset = sum(len(c) for c in calm) / 16_000
    card = shipped_model.card.alerts

    async def main():
        async with running_service(shipped_model, redis_server.url,
                                   **dict.fromkeys(RESPONSIVE)) as service:
            outcome = await stream_native(f"ws://127.0.0.1:{service.ingest.port}/v1/stream",
                                          audio[:, None], rate=16_000, call_id="shipped-rules",
                                          speed=8.0)
            await service.publisher.flush(5)
            return outcome

    outcome = asyncio.run(main())
    started = [e for e in stream_entries(redis_server.url) if e["type"] == "call_started"]
    assert started[-1]["alert_thresholds"] == {"frustration": card["frustration"]["on"],
                                               "distress": card["distress"]["on"]}
    raised = [a for a in outcome.alerts if a["state"] == "raised" and a["kind"] == "frustration"]
    assert raised and raised[0]["threshold"] == card["frustration"]["on"]
    assert raised[0]["call_time_s"] > onset


@pytest.mark.parametrize("hop_s", [1.0, 0.5])
def test_a_burst_the_server_allows_is_scored_not_shed(shipped_model, redis_server, ravdess_dir,
                                                      call_actors, hop_s) -> None:
    """The speed limit lets a client send its first 10 s at once (``callmon stream --fast``
    does), so 8 windows arrive together. With at most 3 windows pending per stream, a model
    still busy with the first of them shed the rest by count (on a day this machine ran the
    model slowly, every fast stream lost its window 0). A window is shed once it is stale,
    never for arriving in a burst the server allows, whatever the hop (at 0.5 s a head start
    is 21 windows). After the head start the client goes on at 1.5 x real time, not the
    default limit of 4 x: the burst is the point here, and a sustained pace beyond what a
    slowed model scores in time is shed as designed (a loaded CI host did, at 4 x)."""
    from streamer.tools.client import FASTEST

    from .streaming import actor_clips

    audio = np.concatenate(actor_clips(ravdess_dir, call_actors[0], "calm", 6))

    async def main():
        async with running_service(SlowModel(shipped_model, 0.3), redis_server.url,
                                   hop_s=hop_s, max_speed=1.5) as service:
            return await stream_native(
                f"ws://127.0.0.1:{service.ingest.port}/v1/stream", audio[:, None], rate=16_000,
                call_id="burst", speed=FASTEST)

    outcome = asyncio.run(main())
    assert outcome.ended["reason"] == "stop" and outcome.ended["windows"] >= 15 / hop_s
    assert outcome.ended["dropped"] == 0, outcome.ended
    assert [w["window_index"] for w in outcome.windows] == list(range(outcome.ended["windows"]))
