"""Genesys AudioHook, Asterisk AudioSocket and FreeSWITCH mod_audio_fork, end to end: a
client speaking each platform's documented format streams a calm-then-angry customer
through the real server and the shipped model, and the frustration alert reaches Redis;
each protocol's malformed inputs get that protocol's error without disturbing a live call."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import numpy as np
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from streamer.ingest.audiofork import parse_metadata
from streamer.ingest.audiohook import parse_duration
from streamer.tools.client import stream_native
from streamer.tools.platforms import (
    audiosocket_message,
    stream_audiofork,
    stream_audiohook,
    stream_audiosocket,
)

from .streaming import actor_clips, calm_then_angry, running_service, wait_for
from .test_stream_e2e import SPEED, assert_frustration_alert, stream_entries


def call_log(redis_url: str, call_id: str) -> list[dict]:
    return [e for e in stream_entries(redis_url) if e.get("call_id") == call_id]


def alerts_of(log: list[dict]) -> list[dict]:
    return [e for e in log if e.get("type") == "alert"]


def two_party(ravdess_dir, call_actors, rate: int) -> tuple[np.ndarray, float]:
    """Customer calm then angry (first channel), an agent calm then angry (second)."""
    customer, onset = calm_then_angry(ravdess_dir, call_actors[2])
    agent, _ = calm_then_angry(ravdess_dir, call_actors[1])
    agent = np.pad(agent[: len(customer)], (0, max(0, len(customer) - len(agent))))
    stereo = np.stack([customer, agent], axis=1)
    if rate != 16_000:
        stereo = soxr.resample(stereo, 16_000, rate).astype(np.float32)
    return stereo, onset


# -- Genesys AudioHook ---------------------------------------------------------------------

def test_audiohook_call_raises_frustration(shipped_model, call_actors, ravdess_dir,
                                           redis_server) -> None:
    stereo8, onset = two_party(ravdess_dir, call_actors, 8000)
    conversation = str(uuid.uuid4())

    async def main():
        async with running_service(shipped_model, redis_server.url,
                                   ingest_token="genesys-key") as service:
            outcome = await stream_audiohook(
                f"ws://127.0.0.1:{service.ingest.port}/v1/audiohook", stereo8,
                conversation_id=conversation, api_key="genesys-key", speed=SPEED)
            await service.publisher.flush(5)
            return outcome

    outcome = asyncio.run(main())
    assert outcome.close_code == 1000
    server = [m for m in outcome.messages if isinstance(m, dict)]
    assert [m["type"] for m in server][0] == "opened"
    assert server[0]["parameters"]["media"] == [
        {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}]
    # Server sequence numbers count up from 1; clientseq acknowledges the client's messages.
    assert [m["seq"] for m in server] == list(range(1, len(server) + 1))
    assert all(m["version"] == "2" and m["id"] == server[0]["id"] for m in server)
    assert server[0]["clientseq"] == 1
    pongs = outcome.of_type("pong")
    assert len(pongs) >= 3 and [p["clientseq"] for p in pongs] == list(range(2, 2 + len(pongs)))
    assert server[-1]["type"] == "closed" and not outcome.of_type("disconnect")
    log = call_log(redis_server.url, conversation)
    assert log[0]["type"] == "call_started" and log[0]["protocol"] == "audiohook"
    assert log[0]["roles"] == ["customer", "agent"]
    assert log[0]["metadata"]["caller"] == "+15550100"
    assert log[-1]["type"] == "call_ended" and log[-1]["reason"] == "stop"
    assert_frustration_alert(alerts_of(log), onset)


def hook_headers(session_id: str, key: str = "genesys-key") -> dict[str, str]:
    return {"Audiohook-Organization-Id": str(uuid.uuid4()),
            "Audiohook-Correlation-Id": str(uuid.uuid4()),
            "Audiohook-Session-Id": session_id, "X-API-KEY": key}


def hook_open(session_id: str, *, seq: int = 1, media=None, **changes) -> dict:
    message = {"version": "2", "id": session_id, "type": "open", "seq": seq, "serverseq": 0,
               "position": "PT0S", "parameters": {
                   "organizationId": str(uuid.uuid4()), "conversationId": str(uuid.uuid4()),
                   "participant": {"id": str(uuid.uuid4()), "ani": "+1555", "aniName": "",
                                   "dnis": "+1666"},
                   "media": media or [{"type": "audio", "format": "PCMU",
                                       "channels": ["external"], "rate": 8000}]}}
    message.update(changes)
    return message


async def hook_session(url: str, session_id: str, *messages, headers=None) -> list[dict]:
    """Send ``messages``; after a ``disconnect`` answer it with ``close`` like Genesys does;
    return what the server sent."""
    answers: list[dict] = []
    async with connect(url, additional_headers=headers or hook_headers(session_id)) as ws:
        try:
            for m in messages:
                await ws.send(m if isinstance(m, (bytes, str)) else json.dumps(m))
                if not isinstance(m, bytes):
                    await asyncio.sleep(0.05)
        except ConnectionClosed:
            pass
        try:
            async for reply in ws:
                data = json.loads(reply)
                answers.append(data)
                if data["type"] == "disconnect":
                    await ws.send(json.dumps({
                        "version": "2", "id": session_id, "type": "close", "seq": 99,
                        "serverseq": data["seq"], "position": "PT0S",
                        "parameters": {"reason": "error"}}))
        except ConnectionClosed:
            pass
    return answers


BAD_HOOK = [
    ("bad_json", lambda sid: ["{nope"]),
    ("bad_version", lambda sid: [hook_open(sid, version="1")]),
    ("bad_sequence", lambda sid: [hook_open(sid, seq=5)]),
    ("bad_message", lambda sid: [hook_open(sid, id=str(uuid.uuid4()))]),
    ("unknown_message", lambda sid: [hook_open(sid, type="dance")]),
    ("unsupported_media", lambda sid: [hook_open(sid, media=[
        {"type": "audio", "format": "L16", "channels": ["external"], "rate": 8000}])]),
    ("audio_before_open", lambda sid: [b"\xff" * 160]),
    ("bad_call_id", lambda sid: [hook_open(sid, parameters={
        **hook_open(sid)["parameters"], "conversationId": "no spaces allowed"})]),
    ("partial_frame", lambda sid: [hook_open(sid, media=[
        {"type": "audio", "format": "PCMU", "channels": ["external", "internal"],
         "rate": 8000}]), b"\xff" * 161]),
    ("bad_message", lambda sid: [hook_open(sid), {
        "version": "2", "id": sid, "type": "ping", "seq": 2, "serverseq": 1,
        "position": "one second", "parameters": {}}]),
    # The limits hold as for every protocol: 40 s of audio in about 2 s.
    ("too_fast", lambda sid: [hook_open(sid)] + [b"\xff" * 8000] * 40),
]


def test_audiohook_bad_input_gets_disconnect_and_spares_other_calls(
        shipped_model, call_actors, ravdess_dir, redis_server) -> None:
    clips = actor_clips(ravdess_dir, call_actors[0], "calm", 4)
    audio = np.concatenate(clips)[:, None]

    async def main():
        async with running_service(shipped_model, redis_server.url,
                                   ingest_token="genesys-key") as service:
            url = f"ws://127.0.0.1:{service.ingest.port}/v1/audiohook"
            live = asyncio.create_task(stream_native(
                f"ws://127.0.0.1:{service.ingest.port}/v1/stream", audio, rate=16_000,
                call_id="bystander", speed=4.0, token="genesys-key"))
            await wait_for(lambda: "bystander" in service.monitor.calls, 10, "the live call")
            answers = {}
            for i, (code, build) in enumerate(BAD_HOOK):
                sid = str(uuid.uuid4())
                answers[(i, code)] = await hook_session(url, sid, *build(sid))
            statuses = []
            for headers in ({"X-API-KEY": "genesys-key"}, hook_headers("s", key="wrong")):
                try:
                    async with connect(url, additional_headers=headers):
                        statuses.append(101)
                except InvalidStatus as exc:
                    statuses.append(exc.response.status_code)
            outcome = await live
            return answers, statuses, outcome, dict(service.monitor.calls)

    answers, statuses, outcome, calls = asyncio.run(main())
    for (_, code), sent in answers.items():
        disconnects = [a for a in sent if a["type"] == "disconnect"]
        assert disconnects, f"{code}: no disconnect in {sent}"
        assert disconnects[-1]["parameters"]["reason"] == "error"
        assert disconnects[-1]["parameters"]["info"].startswith(code), (code, disconnects)
        assert sent[-1]["type"] == "closed", f"{code}: the client's close was not answered"
    assert statuses == [400, 401]  # missing AudioHook headers; wrong API key
    assert outcome.close_code == 1000 and not outcome.errors
    assert outcome.ended["windows"] >= 1 and outcome.ended["dropped"] == 0
    assert calls == {}


def test_audiohook_durations_parse() -> None:
    assert parse_duration("PT0S", "p") == 0.0 and parse_duration("PT12.5S", "p") == 12.5
    for bad in ("12.5", "PT-1S", "PT1M", None, 3):
        with pytest.raises(ValueError):
            parse_duration(bad, "p")


# -- Asterisk AudioSocket ------------------------------------------------------------------

def test_audiosocket_call_raises_frustration(shipped_model, call_actors, ravdess_dir,
                                             redis_server) -> None:
    audio, onset = calm_then_angry(ravdess_dir, call_actors[0])
    mono8 = soxr.resample(audio, 16_000, 8000).astype(np.float32)[:, None]
    short16 = audio[: 16_000 * 5, None]
    call, wide = str(uuid.uuid4()), str(uuid.uuid4())

    async def main():
        async with running_service(shipped_model, redis_server.url, audiosocket_port=0) as service:
            port = service.audiosocket.port
            outcome = await stream_audiosocket("127.0.0.1", port, mono8, call_uuid=call,
                                               speed=SPEED)
            # Asterisk 22's higher-rate kinds: 0x12 is 16 kHz signed linear.
            wide_outcome = await stream_audiosocket("127.0.0.1", port, short16, rate=16_000,
                                                    call_uuid=wide, speed=SPEED)
            await service.publisher.flush(5)
            return outcome, wide_outcome

    outcome, wide_outcome = asyncio.run(main())
    assert outcome.messages == [] and wide_outcome.messages == []  # no error kinds back
    log = call_log(redis_server.url, call)
    assert log[0]["protocol"] == "audiosocket" and log[0]["sample_rate"] == 8000
    assert log[0]["roles"] == ["customer"]
    assert log[-1]["type"] == "call_ended" and log[-1]["reason"] == "stop"
    assert_frustration_alert(alerts_of(log), onset)
    wide_log = call_log(redis_server.url, wide)
    assert wide_log[0]["sample_rate"] == 16_000 and wide_log[-1]["duration_s"] == pytest.approx(
        5.0, abs=0.05)


async def audiosocket_session(port: int, data: bytes, *, half_close: bool = False
                              ) -> list[tuple[int, bytes]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
        if half_close:
            writer.write_eof()
    out = []
    try:
        while True:
            header = await asyncio.wait_for(reader.readexactly(3), 10)
            out.append((header[0], await reader.readexactly(int.from_bytes(header[1:], "big"))))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()
    return out


UUID_MSG = audiosocket_message(0x01, uuid.uuid4().bytes)
SLIN = audiosocket_message(0x10, b"\x00\x01" * 160)
BAD_SOCKET = [
    ("audio_before_start", SLIN),
    ("bad_uuid", audiosocket_message(0x01, b"short")),
    ("unknown_kind", UUID_MSG + audiosocket_message(0x42, b"?")),
    ("partial_frame", UUID_MSG + audiosocket_message(0x10, b"\x00" * 161)),
    ("rate_changed", UUID_MSG + SLIN + audiosocket_message(0x12, b"\x00\x01" * 320)),
    ("already_started", UUID_MSG + UUID_MSG),
    ("too_fast", UUID_MSG + audiosocket_message(0x10, b"\x00\x01" * 2560) * 120),  # 38 s at once
]


def test_audiosocket_bad_input_gets_error_kind_and_spares_other_calls(
        shipped_model, call_actors, ravdess_dir, redis_server) -> None:
    clips = actor_clips(ravdess_dir, call_actors[0], "calm", 4)
    audio = np.concatenate(clips)[:, None]

    async def main():
        async with running_service(shipped_model, redis_server.url, audiosocket_port=0,
                                   start_timeout_s=1.0) as service:
            port = service.audiosocket.port
            live = asyncio.create_task(stream_native(
                f"ws://127.0.0.1:{service.ingest.port}/v1/stream", audio, rate=16_000,
                call_id="bystander-as", speed=4.0))
            await wait_for(lambda: "bystander-as" in service.monitor.calls, 10, "the live call")
            replies = {code: await audiosocket_session(port, data) for code, data in BAD_SOCKET}
            # Closed in the middle of a message: the call ends as an error.
            broken_id = uuid.uuid4()
            truncated = await audiosocket_session(
                port, audiosocket_message(0x01, broken_id.bytes) + SLIN + SLIN[:50],
                half_close=True)
            silent = await audiosocket_session(port, b"")  # no UUID within start_timeout_s
            outcome = await live
            await service.publisher.flush(5)
            return replies, truncated, silent, str(broken_id), outcome, dict(service.monitor.calls)

    replies, truncated, silent, broken_id, outcome, calls = asyncio.run(main())
    for code, got in replies.items():
        assert got == [(0xFF, code.encode())], (code, got)
    assert truncated == [(0xFF, b"partial_message")]
    assert silent == [(0xFF, b"start_timeout")]
    log = call_log(redis_server.url, broken_id)
    assert log[-1]["type"] == "call_ended" and log[-1]["reason"] == "error"
    assert outcome.close_code == 1000 and not outcome.errors
    assert calls == {}


# -- FreeSWITCH mod_audio_fork -------------------------------------------------------------

def test_audiofork_stereo_call_raises_frustration(shipped_model, call_actors, ravdess_dir,
                                                  redis_server) -> None:
    stereo16, onset = two_party(ravdess_dir, call_actors, 16_000)
    call = str(uuid.uuid4())
    # Metadata as a FreeSWITCH dialplan writes it: single quotes.
    metadata = f"{{'callid':'{call}','caller':'1000','queue':'billing'}}"

    async def main():
        async with running_service(shipped_model, redis_server.url) as service:
            url = f"ws://127.0.0.1:{service.ingest.port}/v1/audiofork?mix=stereo&rate=16k"
            outcome = await stream_audiofork(url, stereo16, rate=16_000, metadata=metadata,
                                             speed=SPEED)
            await service.publisher.flush(5)
            return outcome

    outcome = asyncio.run(main())
    assert outcome.close_code == 1000 and outcome.messages == []
    log = call_log(redis_server.url, call)
    assert log[0]["protocol"] == "audiofork" and log[0]["sample_rate"] == 16_000
    assert log[0]["roles"] == ["customer", "agent"]
    assert log[0]["metadata"] == {"caller": "1000", "queue": "billing", "mix": "stereo"}
    assert log[-1]["reason"] == "stop"
    assert_frustration_alert(alerts_of(log), onset)


def test_audiofork_metadata_forms() -> None:
    assert parse_metadata('{"callId": "a"}') == {"callId": "a"}
    assert parse_metadata("{'callId': 'a', 'n': 2}") == {"callId": "a", "n": 2}
    assert parse_metadata("just words") == {"text": "just words"}
    assert parse_metadata("__import__('os')") == {"text": "__import__('os')"}
    with pytest.raises(ValueError):
        parse_metadata("x" * 5000)


BAD_FORK = [
    ("missing_call_id", "?rate=8k", ["{}"], 1008),
    ("missing_rate", "?call_id=f1", ["{}"], 1003),
    ("unsupported_sample_rate", "?call_id=f2&rate=44k", ["{}"], 1003),
    ("unsupported_mix", "?call_id=f3&rate=8k&mix=quad", ["{}"], 1003),
    ("partial_frame", "?call_id=f4&rate=8k&mix=stereo", ["{}", b"\x00" * 6], 1008),
    ("bad_call_id", "?rate=8k", ['{"uuid": "a b"}'], 1008),
    ("too_fast", "?call_id=f5&rate=8k", ["{}"] + [b"\x00\x01" * 8000] * 40, 1008),
]


def test_audiofork_bad_input_gets_error_frame(shipped_model, redis_server) -> None:
    async def main():
        async with running_service(shipped_model, redis_server.url) as service:
            out = {}
            for code, query, messages, _ in BAD_FORK:
                url = f"ws://127.0.0.1:{service.ingest.port}/v1/audiofork{query}"
                got = []
                async with connect(url, subprotocols=["audio.drachtio.org"]) as ws:  # type: ignore[list-item]
                    assert ws.subprotocol == "audio.drachtio.org"
                    with contextlib.suppress(ConnectionClosed):
                        for m in messages:
                            await ws.send(m)
                    with contextlib.suppress(ConnectionClosed):
                        async for reply in ws:
                            got.append(json.loads(reply))
                out[code] = (got, ws.close_code)
            return out, dict(service.monitor.calls)

    out, calls = asyncio.run(main())
    for code, _, _, close in BAD_FORK:
        got, close_code = out[code]
        assert got == [{"type": "error", "data": {"code": code, "message": got[0]["data"]["message"]}}]
        assert got[0]["data"]["message"] and close_code == close, (code, got, close_code)
    assert calls == {}


def test_stream_command_speaks_each_platform(shipped_model, call_actors, ravdess_dir,
                                             redis_server, tmp_path) -> None:
    """``callmon stream --protocol audiohook|audiofork|audiosocket`` as a user runs it."""
    import subprocess
    import sys

    import soundfile as sf

    from .streaming import ServiceThread

    customer = np.concatenate(actor_clips(ravdess_dir, call_actors[2], "angry", 2))
    agent = np.concatenate(actor_clips(ravdess_dir, call_actors[0], "neutral", 2))
    n = min(len(customer), len(agent))
    path = tmp_path / "call.wav"
    sf.write(path, np.stack([customer[:n], agent[:n]], axis=1), 16_000)
    ids = {p: str(uuid.uuid4()) for p in ("audiohook", "audiofork", "audiosocket")}
    with ServiceThread(shipped_model, redis_server.url, audiosocket_port=0) as svc:
        def cli(protocol: str, url: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "callmon_cli", "stream", str(path),
                                   "--url", url, "--speed", "8", "--protocol", protocol,
                                   "--call-id", ids[protocol]],
                                  capture_output=True, text=True, timeout=120)

        runs = {p: cli(p, svc.ingest_url) for p in ("audiohook", "audiofork")}
        runs["audiosocket"] = cli("audiosocket",
                                  f"tcp://127.0.0.1:{svc.service.audiosocket.port}")
        wrong = cli("audiosocket", svc.ingest_url)
        svc.run(svc.service.publisher.flush(5))
    for protocol, run in runs.items():
        assert run.returncode == 0, (protocol, run.stderr)
        assert f"as {protocol} call {ids[protocol]}" in run.stdout
        log = call_log(redis_server.url, ids[protocol])
        assert log[0]["protocol"] == protocol and log[-1]["type"] == "call_ended"
        roles = ["customer"] if protocol == "audiosocket" else ["customer", "agent"]
        assert log[0]["roles"] == roles
    assert wrong.returncode == 2 and "tcp://HOST:PORT" in wrong.stderr


# -- AudioHook request signatures ----------------------------------------------------------

SECRET = "c2VjcmV0LWtleS1mb3ItdGVzdHM="  # base64, as Genesys shows a client secret


def signed_headers(**changes) -> tuple[dict[str, str], str]:
    import base64

    from streamer.ingest.httpsig import sign
    from streamer.tools.platforms import SIGNED_COMPONENTS

    headers = {"host": "callmon.example:443", "audiohook-organization-id": "org",
               "audiohook-session-id": "sess", "audiohook-correlation-id": "corr",
               "x-api-key": "key"}
    target = "/v1/audiohook?x=1"
    headers.update(sign(headers, method="GET", target=target, key=base64.b64decode(SECRET),
                        components=SIGNED_COMPONENTS, keyid="k", nonce="n", **changes))
    return {k.lower(): v for k, v in headers.items()}, target


def test_audiohook_signatures_verify_and_refuse() -> None:
    import base64

    from streamer.ingest.httpsig import SignatureError, verify

    key = base64.b64decode(SECRET)
    headers, target = signed_headers()
    verify(headers, method="GET", target=target, key=key, required=("x-api-key",))
    bad = [
        ({**headers, "x-api-key": "other"}, target, "does not match"),
        (headers, "/v1/audiohook?x=2", "does not match"),
        ({k: v for k, v in headers.items() if k != "signature"}, target, "not signed"),
        ({**headers, "signature-input": "sig1=(\"x-api-key\""}, target, "signature field"),
        ({**headers, "signature": "sig1=:not base64!:"}, target, "base64"),
    ]
    for h, t, says in bad:
        with pytest.raises(SignatureError, match=says):
            verify(h, method="GET", target=t, key=key)
    with pytest.raises(SignatureError, match="does not match"):
        verify(headers, method="GET", target=target, key=b"wrong")
    with pytest.raises(SignatureError, match="does not cover"):
        verify(headers, method="GET", target=target, key=key, required=("content-type",))
    old, _ = signed_headers(created=1_000_000_000)
    with pytest.raises(SignatureError, match="expired"):
        verify(old, method="GET", target=target, key=key)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.text(max_size=120))
def test_signature_fields_never_crash_the_parser(signature_input, signature) -> None:
    from streamer.ingest.httpsig import SignatureError, verify

    headers = {"signature-input": signature_input, "signature": signature, "x-api-key": "k"}
    try:
        verify(headers, method="GET", target="/", key=b"k")
    except SignatureError:
        pass


def test_audiohook_with_a_client_secret_needs_a_signed_request(shipped_model, redis_server):
    tone = (0.1 * np.sin(np.arange(8000 * 2) * 0.3)).astype(np.float32)[:, None]

    async def main():
        async with running_service(shipped_model, redis_server.url, ingest_token="k",
                                   audiohook_client_secret=SECRET) as service:
            url = f"ws://127.0.0.1:{service.ingest.port}/v1/audiohook"
            signed = await stream_audiohook(url, tone, api_key="k", client_secret=SECRET,
                                            speed=None)
            try:
                await stream_audiohook(url, tone, api_key="k", speed=None)
                unsigned = 101
            except InvalidStatus as exc:
                unsigned = exc.response.status_code
            return signed, unsigned

    signed, unsigned = asyncio.run(main())
    assert [m["type"] for m in signed.messages if isinstance(m, dict)][0] == "opened"
    assert signed.close_code == 1000 and unsigned == 401
