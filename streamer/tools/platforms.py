"""Clients that behave like the telephony platforms callmon ingests from: Genesys Cloud
AudioHook, Asterisk AudioSocket and FreeSWITCH mod_audio_fork, each in its documented
format (docs/protocol.md). They stream a file like the platform would and collect what the
server answers; results and alerts of these protocols go to Redis only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass, field

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from models.audio import encode_mulaw, float_to_int16
from streamer.tools.client import FASTEST, FRAME_MS, _paced, fastest_pace

#: What Genesys covers in an AudioHook connection's signature.
SIGNED_COMPONENTS = ("@request-target", "@authority", "audiohook-organization-id",
                     "audiohook-session-id", "audiohook-correlation-id", "x-api-key")


@dataclass(slots=True)
class PlatformOutcome:
    """What the server said during one call, in the platform's own messages."""

    messages: list = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.messages if isinstance(m, dict) and m.get("type") == kind]


def _pace(speed: float | None) -> tuple[float | None, float]:
    """These protocols announce no pace: callmon's defaults for --fast."""
    return fastest_pace(None) if speed == FASTEST else (speed, 0.0)


async def _collect(ws, outcome: PlatformOutcome, on_message=None) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            data = json.loads(message) if isinstance(message, str) else message
            outcome.messages.append(data)
            if on_message is not None:
                on_message(data)


async def stream_audiohook(
    url: str, audio: np.ndarray, *, conversation_id: str | None = None,
    api_key: str = "callmon-test-key", speed: float | None = 1.0,
    participant: dict | None = None, ping_every_s: float = 5.0,
    client_secret: str | None = None,
) -> PlatformOutcome:
    """Behave like Genesys Cloud AudioHook Monitor (protocol 2): headers, ``open`` offering
    stereo and mono PCMU, 20 ms binary PCMU frames once ``opened``, a ``ping`` every
    ``ping_every_s`` of audio, ``close`` → ``closed``. ``audio``: 8 kHz ``(samples, 1 or 2)``,
    customer (external) first. With ``client_secret`` (base64) the request is signed as
    Genesys signs it (HMAC-SHA256 HTTP message signature)."""
    session_id = str(uuid.uuid4())
    headers = {"Audiohook-Organization-Id": str(uuid.uuid4()),
               "Audiohook-Correlation-Id": str(uuid.uuid4()),
               "Audiohook-Session-Id": session_id, "X-API-KEY": api_key}
    if client_secret:
        import base64
        from urllib.parse import urlsplit

        from streamer.ingest.httpsig import sign

        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        headers.update(sign({**{k.lower(): v for k, v in headers.items()},
                             "host": parts.netloc}, method="GET", target=target,
                            key=base64.b64decode(client_secret), components=SIGNED_COMPONENTS,
                            keyid="callmon-test", nonce=uuid.uuid4().hex))
    outcome = PlatformOutcome()
    seq = 0
    serverseq = 0
    sent_s = 0.0
    opened = asyncio.Event()
    closed = asyncio.Event()

    def seen(data) -> None:
        nonlocal serverseq
        if isinstance(data, dict):
            serverseq = max(serverseq, int(data.get("seq", 0)))
            if data.get("type") == "opened":
                opened.set()
            if data.get("type") in ("closed", "disconnect"):
                closed.set()

    def message(kind: str, parameters: dict) -> str:
        nonlocal seq
        seq += 1
        return json.dumps({"version": "2", "id": session_id, "type": kind, "seq": seq,
                           "serverseq": serverseq, "position": f"PT{sent_s:.3f}S",
                           "parameters": parameters})

    offers = [{"type": "audio", "format": "PCMU", "channels": ["external", "internal"],
               "rate": 8000},
              {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}]
    async with connect(url, additional_headers=headers, max_size=None, compression=None) as ws:
        receiver = asyncio.create_task(_collect(ws, outcome, seen))
        await ws.send(message("open", {
            "organizationId": headers["Audiohook-Organization-Id"],
            "conversationId": conversation_id or str(uuid.uuid4()),
            "participant": participant or {"id": str(uuid.uuid4()), "ani": "+15550100",
                                           "aniName": "Test Caller", "dnis": "+15550199"},
            "media": offers if audio.shape[1] == 2 else offers[1:], "language": "en-US"}))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(opened.wait(), 10.0)
        if opened.is_set():
            pace, head_start = _pace(speed)
            step = 8000 * FRAME_MS // 1000
            n = (audio.shape[0] + step - 1) // step
            next_ping = ping_every_s
            with contextlib.suppress(ConnectionClosed):  # ended by the server: it said why
                async for i in _paced(n, FRAME_MS / 1000, pace, head_start_s=head_start):
                    chunk = audio[i * step : (i + 1) * step]
                    await ws.send(encode_mulaw(float_to_int16(chunk)).tobytes())
                    sent_s += len(chunk) / 8000
                    if sent_s >= next_ping:
                        await ws.send(message("ping", {"rtt": "PT0.01S"}))
                        next_ping += ping_every_s
                await ws.send(message("close", {"reason": "end"}))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closed.wait(), 30.0)
            await ws.close()
        await receiver
        outcome.close_code, outcome.close_reason = ws.close_code, ws.close_reason or ""
    return outcome


async def stream_audiofork(
    url: str, audio: np.ndarray, *, rate: int, call_id: str | None = None,
    metadata: dict | str | None = None, speed: float | None = 1.0,
    subprotocol: str = "audio.drachtio.org",
) -> PlatformOutcome:
    """Behave like FreeSWITCH ``uuid_audio_fork <uuid> start <url> <mix> <rate> <metadata>``:
    the metadata text frame, then 20 ms binary L16 frames (stereo interleaved), then the
    socket closes. The URL must carry ``mix`` and ``rate`` as the dialplan would."""
    outcome = PlatformOutcome()
    call_id = call_id or str(uuid.uuid4())
    if metadata is None:
        metadata = {"callid": call_id, "caller": "1000", "callee": "2000"}
    async with connect(url, subprotocols=[subprotocol], max_size=None,  # type: ignore[list-item]
                       compression=None) as ws:
        receiver = asyncio.create_task(_collect(ws, outcome))
        await ws.send(metadata if isinstance(metadata, str) else json.dumps(metadata))
        pace, head_start = _pace(speed)
        step = rate * FRAME_MS // 1000
        n = (audio.shape[0] + step - 1) // step
        try:
            async for i in _paced(n, FRAME_MS / 1000, pace, head_start_s=head_start):
                await ws.send(float_to_int16(audio[i * step : (i + 1) * step])
                              .astype("<i2").tobytes())
        except ConnectionClosed:
            pass
        await ws.close()
        await receiver
        outcome.close_code, outcome.close_reason = ws.close_code, ws.close_reason or ""
    return outcome


AUDIOSOCKET_KINDS = {8000: 0x10, 12000: 0x11, 16000: 0x12, 24000: 0x13, 32000: 0x14,
                     44100: 0x15, 48000: 0x16, 96000: 0x17, 192000: 0x18}


def audiosocket_message(kind: int, payload: bytes = b"") -> bytes:
    return bytes([kind]) + len(payload).to_bytes(2, "big") + payload


async def stream_audiosocket(
    host: str, port: int, audio: np.ndarray, *, rate: int = 8000, call_uuid: str | None = None,
    speed: float | None = 1.0,
) -> PlatformOutcome:
    """Behave like Asterisk's ``AudioSocket(uuid, host:port)``: the UUID message, 20 ms
    signed-linear frames of the rate's kind, the hang-up. ``audio``: mono at ``rate``."""
    outcome = PlatformOutcome()
    reader, writer = await asyncio.open_connection(host, port)

    async def read_replies() -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                header = await reader.readexactly(3)
                payload = await reader.readexactly(int.from_bytes(header[1:], "big"))
                outcome.messages.append({"kind": header[0], "payload": payload})

    receiver = asyncio.create_task(read_replies())
    try:
        writer.write(audiosocket_message(0x01, uuid.UUID(call_uuid or str(uuid.uuid4())).bytes))
        pace, head_start = _pace(speed)
        step = rate * FRAME_MS // 1000
        n = (audio.shape[0] + step - 1) // step
        kind = AUDIOSOCKET_KINDS[rate]
        async for i in _paced(n, FRAME_MS / 1000, pace, head_start_s=head_start):
            pcm = float_to_int16(audio[i * step : (i + 1) * step]).astype("<i2").tobytes()
            writer.write(audiosocket_message(kind, pcm))
            await writer.drain()
        writer.write(audiosocket_message(0x00))
        await writer.drain()
    except ConnectionError:
        pass
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(receiver), 30.0)
    receiver.cancel()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return outcome
