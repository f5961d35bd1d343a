"""Bad input gets a clear JSON error and the right close code, and changes nothing else."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from streamer.tools.client import stream_native

from .streaming import actor_clips, running_service, wait_for

START = {"type": "start", "call_id": "bad-1", "sample_rate": 16000, "encoding": "pcm_s16le"}


async def refused(url: str, *messages, headers=None) -> tuple[list[dict], int | None]:
    """Send ``messages`` and collect what the server answers until it closes."""
    answers: list[dict] = []
    async with connect(url, additional_headers=headers, max_size=None) as ws:
        try:
            for m in messages:
                await ws.send(m if isinstance(m, (bytes, str)) else json.dumps(m))
            async for reply in ws:
                answers.append(json.loads(reply))
        except ConnectionClosed:
            pass
        await ws.wait_closed()
        return answers, ws.close_code


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize(
    ("messages", "code", "close"),
    [
        (["{not json"], "bad_json", 1008),
        ([b"\x00\x01"], "audio_before_start", 1008),
        ([{**START, "encoding": "opus"}], "unsupported_encoding", 1003),
        ([{**START, "sample_rate": 12345}], "unsupported_sample_rate", 1003),
        ([START, b"\x00\x01\x02"], "partial_frame", 1008),
        ([START, {"type": "dance"}], "unknown_message", 1008),
        ([START, START], "already_started", 1008),
        # Inputs that used to crash the handler (issue 11): a clear refusal, no zombie call.
        ([START, "[" * 20_000], "bad_json", 1008),
        ([{**START, "encoding": ["x"]}], "unsupported_encoding", 1003),
        ([{**START, "channels": 1.0}], "unsupported_channels", 1003),
        ([{**START, "call_id": "bad-1\n"}], "bad_call_id", 1008),
        ([{**START, "metadata": {"agent": "\ud800"}}], "bad_metadata", 1008),
    ],
)
def test_refusals(shipped_model, redis_server, messages, code, close) -> None:
    async def main():
        async with running_service(shipped_model, redis_server.url) as service:
            answers, close_code = await refused(
                f"ws://127.0.0.1:{service.ingest.port}/v1/stream", *messages)
            return answers, close_code, dict(service.monitor.calls)

    answers, close_code, calls = run(main())
    errors = [a for a in answers if a["type"] == "error"]
    assert errors and errors[-1]["code"] == code and errors[-1]["message"]
    assert close_code == close
    assert calls == {}  # nothing left behind


def test_oversized_frame_closes_1009(shipped_model, redis_server) -> None:
    async def main():
        async with running_service(shipped_model, redis_server.url, max_frame_bytes=4096) as svc:
            _, close_code = await refused(f"ws://127.0.0.1:{svc.ingest.port}/v1/stream",
                                          START, b"\x00" * 10_000)
            # The call is registered once its id is claimed in Redis, maybe after the close.
            await wait_for(lambda: svc.monitor.stats.calls_ended == 1, 5, "the call to end")
            return close_code, svc.monitor.stats.calls_ended, dict(svc.monitor.calls)

    close_code, ended, live = run(main())
    assert close_code == 1009 and ended == 1 and live == {}


def test_duplicate_call_and_capacity_do_not_disturb_the_live_call(
        shipped_model, redis_server, ravdess_dir, call_actors) -> None:
    audio = np.concatenate(actor_clips(ravdess_dir, call_actors[0], "angry", 3))

    async def main():
        async with running_service(shipped_model, redis_server.url, max_calls=2) as service:
            base = f"ws://127.0.0.1:{service.ingest.port}/v1/stream"
            live = asyncio.create_task(stream_native(base, audio[:, None], rate=16000,
                                                     call_id="live-1", speed=4))
            other = asyncio.create_task(stream_native(base, audio[:, None], rate=16000,
                                                      call_id="live-2", speed=4))
            await wait_for(lambda: len(service.monitor.calls) == 2, 10, "both calls to start")
            dup, dup_close = await refused(base, {**START, "call_id": "live-1"})
            full, full_close = await refused(base, {**START, "call_id": "third"})
            return await live, await other, dup, dup_close, full, full_close

    live, other, dup, dup_close, full, full_close = run(main())
    assert dup[-1]["code"] == "duplicate_call_id" and dup_close == 1008
    assert full[-1]["code"] == "at_capacity" and full_close == 1013
    for outcome in (live, other):
        assert outcome.close_code == 1000 and outcome.ended["dropped"] == 0
        assert outcome.ended["windows"] == len(outcome.windows) > 5


def test_token_auth_health_and_unknown_paths(shipped_model, redis_server) -> None:
    async def main():
        async with running_service(shipped_model, redis_server.url, ingest_token="s3cret") as svc:
            base = f"ws://127.0.0.1:{svc.ingest.port}"
            statuses = []
            for headers in (None, {"Authorization": "Bearer wrong"}):
                with pytest.raises(InvalidStatus) as info:
                    async with connect(base + "/v1/stream", additional_headers=headers):
                        pass
                statuses.append(info.value.response.status_code)
            ok, ok_close = await refused(base + "/v1/stream?token=s3cret",
                                         {**START, "call_id": "authed"}, {"type": "stop"})
            with pytest.raises(InvalidStatus) as missing:
                async with connect(base + "/v2/nothing"):
                    pass
            health = await asyncio.to_thread(
                lambda: json.loads(urllib.request.urlopen(base.replace("ws", "http") + "/healthz",
                                                          timeout=5).read()))
            return statuses, ok, ok_close, missing.value.response.status_code, health

    statuses, ok, ok_close, missing, health = run(main())
    assert statuses == [401, 401]
    assert ok[0]["type"] == "started" and ok[-1]["type"] == "ended" and ok_close == 1000
    assert missing == 404
    assert health["status"] == "ok" and health["redis"]["connected"] is True
    assert health["model"]["labels"] == list(shipped_model.labels)


TWILIO_START = {"event": "start", "streamSid": "MZ1", "start": {
    "streamSid": "MZ1", "callSid": "CA-inf", "tracks": ["inbound"],
    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}


@pytest.mark.parametrize("timestamp", ["Infinity", "-Infinity", "1e400", "-5"])
def test_twilio_timestamps_that_are_not_integers_end_the_call(shipped_model, redis_server,
                                                               timestamp) -> None:
    """``"timestamp": Infinity`` raised OverflowError and left the call live for ever: in
    the live set, its id refused as a duplicate, its slot counted against max_calls."""
    media = '{"event":"media","media":{"payload":"","timestamp":' + timestamp + "}}"

    async def main():
        async with running_service(shipped_model, redis_server.url, max_calls=1) as service:
            url = f"ws://127.0.0.1:{service.ingest.port}/v1/twilio?results=1"
            answers, close_code = await refused(url, TWILIO_START, media)
            await wait_for(lambda: not service.monitor.calls, 5, "the call to end")
            # The slot is free again: the same call id starts and stops normally.
            again, again_code = await refused(url, TWILIO_START, {"event": "stop"})
            return answers, close_code, again_code, service.monitor.stats.calls_ended

    answers, close_code, again_code, ended = run(main())
    errors = [a for a in answers if a.get("type") == "error"]
    assert close_code == 1008 and errors and errors[-1]["code"] == "bad_twilio_media"
    assert again_code == 1000 and ended == 2


def test_twilio_timestamps_that_jitter_place_every_chunk(shipped_model, redis_server,
                                                         ravdess_dir) -> None:
    """Chunks stamped a few ms off the 20 ms grid (a platform's clock jitters) were dropped
    whole when "early" and preceded by silence when "late", and a resent chunk overlapping
    the audio so far was dropped with the new audio it carried. The same speech with exact
    timestamps and with jittered ones, duplicates and a resend now scores the same."""
    import base64

    import soxr

    from models.audio import encode_mulaw, float_to_int16

    speech = np.concatenate(actor_clips(ravdess_dir, "17", "calm", 2))
    mulaw = encode_mulaw(float_to_int16(soxr.resample(speech, 16_000, 8_000))).tobytes()
    chunk = 160  # 20 ms of 8 kHz μ-law
    n = len(mulaw) // chunk

    def media(ts: int, first: int, last: int) -> dict:
        payload = base64.b64encode(mulaw[first * chunk:last * chunk]).decode()
        return {"event": "media", "media": {"track": "inbound", "timestamp": str(ts),
                                            "payload": payload}}

    exact = [media(1000 + 20 * i, i, i + 1) for i in range(n)]
    jitter = np.random.default_rng(0).integers(-4, 5, n)
    jitter[0] = 0
    jittered = []
    for i in range(n):
        if i % 50 == 25:  # chunk i resent with chunk i - 1 before it, from i - 1's time
            jittered.append(media(1000 + 20 * (i - 1), i - 1, i + 1))
        else:
            jittered.append(media(1000 + 20 * i + int(jitter[i]), i, i + 1))
        if i % 40 == 7:  # a duplicate
            jittered.append(jittered[-1])

    async def main():
        async with running_service(shipped_model, redis_server.url) as service:
            url = f"ws://127.0.0.1:{service.ingest.port}/v1/twilio?results=1"
            out = []
            for call, events in (("CAexact", exact), ("CAjitter", jittered)):
                start = {**TWILIO_START, "start": {**TWILIO_START["start"], "callSid": call}}
                answers, _ = await refused(url, start, *events, {"event": "stop"})
                out.append([a for a in answers if a.get("type") == "window"])
            return out

    exact_windows, jittered_windows = run(main())
    assert len(exact_windows) == len(jittered_windows) >= 3  # the speech windows of 7 s
    for a, b in zip(exact_windows, jittered_windows, strict=True):
        assert (a["start_s"], a["speech_ratio"]) == (b["start_s"], b["speech_ratio"])
        assert a["scores"].keys() == b["scores"].keys()
        assert all(abs(a["scores"][k] - b["scores"][k]) < 1e-3 for k in a["scores"]), (a, b)


def test_twilio_gap_fill_counts_against_the_speed_limit(shipped_model, redis_server) -> None:
    """Timestamps 5 s apart made 15 055 s of call out of 20 s of wall time: the silence
    filled into the gaps was not counted by the speed and length limits."""
    import base64

    payload = base64.b64encode(b"\xff" * 160).decode()  # 20 ms of μ-law silence

    def media(i: int) -> dict:
        return {"event": "media", "media": {"track": "inbound", "payload": payload,
                                            "timestamp": str(5000 * i)}}

    async def main():
        async with running_service(shipped_model, redis_server.url, max_speed=4.0,
                                   speed_burst_s=10.0) as service:
            url = f"ws://127.0.0.1:{service.ingest.port}/v1/twilio?results=1"
            answers, close_code = await refused(url, TWILIO_START, *[media(i) for i in range(200)])
            await wait_for(lambda: not service.monitor.calls, 5, "the call to end")
            return answers, close_code

    answers, close_code = run(main())
    errors = [a for a in answers if a.get("type") == "error"]
    assert close_code == 1008 and errors and errors[-1]["code"] == "too_fast"
    ended = [a for a in answers if a.get("type") == "ended"]
    assert ended and ended[0]["duration_s"] < 60  # refused within the 10 s head start + a gap


def test_the_alert_follower_goes_on_past_entries_it_cannot_read(redis_server) -> None:
    """One entry in the alert log that is not an alert or call event (unreadable JSON, not an
    object, no id, an alert without its fields: another writer, a truncated write) stopped
    ``callmon alerts`` for good, and every consumer built on ``follow_alerts``, with a
    traceback. It is skipped and said once; what follows it still arrives."""
    import subprocess
    import sys
    import time

    import redis

    from streamer import schema
    from streamer.alerts_feed import follow_alerts
    from streamer.schema import Alert

    r = redis.Redis.from_url(redis_server.url)
    good = Alert(id=schema.new_id(), call_id="after-bad", role="customer", kind="distress",
                 state="raised", score=0.9, threshold=0.65, window_index=4, call_time_s=7.0)
    bare = schema.new_id()
    entries = [{"id": schema.new_id(), "type": "alert", "data": "{truncated"},
               {"id": schema.new_id(), "type": "alert", "data": "[1, 2]"},
               {"type": "alert", "data": json.dumps({"type": "alert"})},
               {"id": bare, "type": "alert", "data": json.dumps({"id": bare, "type": "alert"})},
               {"id": schema.new_id(), "type": "alert"},
               {"id": good.id, "type": "alert", "data": schema.dumps(good)}]
    before = (r.xinfo_stream(schema.ALERTS_STREAM)["last-generated-id"].decode()
              if r.exists(schema.ALERTS_STREAM) else "0")  # replayed: the entries after it
    first = r.xadd(schema.ALERTS_STREAM, entries[0]).decode()
    for fields in entries[1:]:
        r.xadd(schema.ALERTS_STREAM, fields)

    heard: list[dict] = []
    said: list[str] = []

    async def follow() -> None:
        stop = asyncio.Event()

        def collect(data: dict) -> None:
            heard.append(data)
            if data["id"] == good.id:
                stop.set()

        await asyncio.wait_for(follow_alerts(redis_server.url, since=before, on_message=collect,
                                             on_status=said.append, stop=stop, block_ms=200), 10)

    asyncio.run(follow())
    # The bare alert is an object with an id: delivered, for the consumer to judge.
    assert [d["id"] for d in heard] == [bare, good.id]
    assert len(said) == 1 and "skipping" in said[0] and first in said[0]

    cli = subprocess.Popen([sys.executable, "-m", "callmon_cli", "alerts", "--since", before,
                            "--redis-url", redis_server.url],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(6)
    alive = cli.poll() is None
    cli.terminate()
    out, err = cli.communicate(timeout=10)
    assert alive, err
    assert "Traceback" not in err and "skipping" in err
    lines = out.splitlines()
    assert any(f"id={good.id}" in line and "distress" in line for line in lines), out
    assert any(bare in line for line in lines)  # shown as it came, not dropped
