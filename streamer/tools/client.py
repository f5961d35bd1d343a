"""Clients: send a file (or the microphone) to the ingest server like a telephony platform
would, natively or in Twilio's Media Streams format, and print what comes back."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from models.audio import decode_audio, encode_alaw, encode_mulaw, float_to_int16

FRAME_MS = 20


@dataclass(slots=True)
class StreamOutcome:
    """What the server sent back during one streamed call."""

    started: dict | None = None
    windows: list[dict] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)
    ended: dict | None = None
    errors: list[dict] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""


def load_for_streaming(path: Path | str, *, rate: int) -> np.ndarray:
    """Decode a file to float32 ``(samples, channels)`` at ``rate`` (stereo stays stereo)."""
    return decode_audio(path, rate=rate, stereo=True).audio


def encode(audio: np.ndarray, encoding: str) -> bytes:
    """float32 ``(samples, channels)`` → interleaved bytes in ``encoding``."""
    if encoding == "pcm_s16le":
        return float_to_int16(audio).astype("<i2").tobytes()
    if encoding == "f32le":
        return audio.astype("<f4").tobytes()
    if encoding == "mulaw":
        return encode_mulaw(float_to_int16(audio)).tobytes()
    if encoding == "alaw":
        return encode_alaw(float_to_int16(audio)).tobytes()
    raise ValueError(f"unknown encoding {encoding!r}")


#: ``speed`` value meaning "as fast as the server accepts" (its max_speed after its head
#: start, with a margin); a server that does not say uses callmon's defaults.
FASTEST = -1.0
DEFAULT_MAX_SPEED = 4.0
DEFAULT_SPEED_BURST_S = 10.0
MARGIN = 0.85


def fastest_pace(started: dict | None) -> tuple[float, float]:
    """(speed, head start in seconds) just inside what the server accepts."""
    started = started or {}
    max_speed = float(started.get("max_speed", DEFAULT_MAX_SPEED))
    burst = float(started.get("speed_burst_s", DEFAULT_SPEED_BURST_S))
    return MARGIN * max_speed, MARGIN * burst


def server_pace(speed: float, started: dict | None) -> tuple[float, float, str | None]:
    """(speed, head start in seconds, notice) for a call the server answered with ``started``.

    ``FASTEST`` goes just inside the pace the server announces. A speed above that pace would
    be refused (``too_fast``) once the head start is spent, part way through the file, so it
    is lowered to the server's pace with a notice saying so. A server that announced nothing
    (no ``started`` in time) gets the speed asked for.
    """
    if speed == FASTEST:
        return (*fastest_pace(started), None)
    if not started or "max_speed" not in started or speed <= float(started["max_speed"]):
        return speed, 0.0, None
    paced, head_start = fastest_pace(started)
    return paced, head_start, (
        f"this server accepts audio at most {float(started['max_speed']):g}x real time (after "
        f"{float(started.get('speed_burst_s', DEFAULT_SPEED_BURST_S)):g} s at once): sending "
        f"at {paced:.3g}x instead of {speed:g}x")


async def _paced(frames: int, frame_s: float, speed: float | None, *,
                 head_start_s: float = 0.0) -> AsyncIterator[int]:
    """Yield frame numbers at ``speed`` × real time (``None``: as fast as possible), the
    first ``head_start_s`` seconds of audio at once."""
    started = time.monotonic()
    for i in range(frames):
        if speed:
            ahead = max(0.0, i * frame_s - head_start_s)
            delay = started + ahead / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # real-time pacing of the sender, not a wait on state
        yield i


def _collect(outcome: StreamOutcome, message: str | bytes,
             on_message: Callable[[dict], None] | None) -> None:
    data = json.loads(message)
    kind = data.get("type")
    if kind == "window":
        outcome.windows.append(data)
    elif kind == "alert":
        outcome.alerts.append(data)
    elif kind == "started":
        outcome.started = data
    elif kind == "ended":
        outcome.ended = data
    elif kind == "error":
        outcome.errors.append(data)
    if on_message is not None:
        on_message(data)


async def _receive(ws, outcome: StreamOutcome, on_message) -> None:
    try:
        async for message in ws:
            _collect(outcome, message, on_message)
    except ConnectionClosed:
        pass


async def stream_native(
    url: str, audio: np.ndarray, *, rate: int, call_id: str | None = None,
    encoding: str = "pcm_s16le", roles: list[str] | None = None, metadata: dict | None = None,
    speed: float | None = 1.0, frame_ms: int = FRAME_MS, token: str | None = None,
    on_message: Callable[[dict], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> StreamOutcome:
    """Stream ``audio`` (``(samples, channels)`` at ``rate``) over the native protocol.

    ``speed``: a multiple of real time, ``FASTEST``, or ``None`` (no pacing at all); a pace
    the server announces it would refuse is lowered to its own (:func:`server_pace`), and
    ``on_notice`` hears why.
    """
    channels = audio.shape[1]
    headers = {"Authorization": f"Bearer {token}"} if token else None
    outcome = StreamOutcome()
    async with connect(url, additional_headers=headers, max_size=None, compression=None) as ws:
        await ws.send(json.dumps({
            "type": "start", "call_id": call_id or f"call-{uuid.uuid4().hex[:12]}",
            "sample_rate": rate, "encoding": encoding, "channels": channels,
            "roles": roles or ["customer", "agent"][:channels], "metadata": metadata or {},
        }))
        answered = asyncio.Event()

        def on_any(data: dict) -> None:
            answered.set()
            if on_message is not None:
                on_message(data)

        receiver = asyncio.create_task(_receive(ws, outcome, on_any))
        step = rate * frame_ms // 1000
        n = (audio.shape[0] + step - 1) // step
        head_start = 0.0
        if speed is not None:  # learn the server's pace from its "started" message
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(answered.wait(), 5.0)
            speed, head_start, notice = server_pace(speed, outcome.started)
            if notice and on_notice is not None:
                on_notice(notice)
        try:
            async for i in _paced(n, frame_ms / 1000, speed, head_start_s=head_start):
                await ws.send(encode(audio[i * step : (i + 1) * step], encoding))
            await ws.send(json.dumps({"type": "stop"}))
        except ConnectionClosed:
            pass  # the server ended the call: why is in what it sent before closing
        except Exception:
            receiver.cancel()
            raise
        await receiver
        outcome.close_code, outcome.close_reason = ws.close_code, ws.close_reason or ""
    return outcome


async def stream_twilio(
    url: str, audio: np.ndarray, *, call_id: str | None = None, speed: float | None = 1.0,
    token: str | None = None, on_message: Callable[[dict], None] | None = None,
    custom_parameters: dict | None = None,
) -> StreamOutcome:
    """Behave like Twilio Media Streams: ``connected``, ``start``, 20 ms base64 μ-law
    ``media`` events per track (inbound = first channel, outbound = second), ``stop``.
    ``audio`` must already be at 8 kHz."""
    call_sid = call_id or f"CA{uuid.uuid4().hex}"
    stream_sid = f"MZ{uuid.uuid4().hex}"
    tracks = ["inbound", "outbound"][: audio.shape[1]]
    sep = "&" if "?" in url else "?"
    full = f"{url}{sep}results=1" + (f"&token={token}" if token else "")
    outcome = StreamOutcome()
    async with connect(full, max_size=None, compression=None) as ws:
        seq = 1
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(json.dumps({
            "event": "start", "sequenceNumber": str(seq), "streamSid": stream_sid,
            "start": {"streamSid": stream_sid, "accountSid": "AC" + "0" * 32, "callSid": call_sid,
                      "tracks": tracks, "customParameters": custom_parameters or {},
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                      "channels": 1}},
        }))
        receiver = asyncio.create_task(_receive(ws, outcome, on_message))
        step = 8000 * FRAME_MS // 1000
        n = (audio.shape[0] + step - 1) // step
        head_start = 0.0
        if speed == FASTEST:  # Twilio's protocol has no "started": callmon's defaults
            speed, head_start = fastest_pace(None)
        with contextlib.suppress(ConnectionClosed):  # ended by the server: it said why
            async for i in _paced(n, FRAME_MS / 1000, speed, head_start_s=head_start):
                for c, track in enumerate(tracks):
                    seq += 1
                    payload = encode(audio[i * step : (i + 1) * step, c : c + 1], "mulaw")
                    await ws.send(json.dumps({
                        "event": "media", "sequenceNumber": str(seq), "streamSid": stream_sid,
                        "media": {"track": track, "chunk": str(i + 1),
                                  "timestamp": str(i * FRAME_MS),
                                  "payload": base64.b64encode(payload).decode()},
                    }))
            seq += 1
            await ws.send(json.dumps({"event": "stop", "sequenceNumber": str(seq),
                                      "streamSid": stream_sid,
                                      "stop": {"accountSid": "AC" + "0" * 32,
                                               "callSid": call_sid}}))
        await receiver
        outcome.close_code, outcome.close_reason = ws.close_code, ws.close_reason or ""
    return outcome


def format_result(data: dict) -> str | None:
    """One printable line per window result or alert."""
    if data.get("type") == "window":
        head = f"{data['call_id']} {data['role']:<8} {data['start_s']:7.1f}–{data['end_s']:6.1f}s"
        if not data.get("scores"):
            return f"{head}  (silence)"
        top = " ".join(f"{k}={v:.2f}" for k, v in sorted(data["scores"].items(),
                                                         key=lambda kv: -kv[1])[:3])
        return (f"{head}  {data['emotion']:<8} {data['confidence']:.2f}  [{top}]  "
                f"frustration={data['frustration']:.2f} distress={data['distress']:.2f}")
    if data.get("type") == "alert":
        return (f"*** {data['kind'].upper()} {data['state']} on {data['call_id']} "
                f"({data['role']}) score {data['score']:.2f} at {data['call_time_s']:.1f} s "
                f"[{data['id']}]")
    if data.get("type") in ("error", "ended", "started"):
        return json.dumps(data)
    return None
