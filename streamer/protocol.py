"""Parsing and validation of what clients send: the native start/stop messages, binary
audio frames, and Twilio Media Streams events. Pure functions; every refusal is a
:class:`ProtocolError` carrying the websocket close code to use."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer.codecs import decode_alaw, decode_mulaw

# RFC 6455 close codes used by the server.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # the server is shutting down
CLOSE_UNSUPPORTED = 1003  # data the server cannot accept: unknown encoding or rate
CLOSE_POLICY = 1008  # malformed or out-of-order messages, duplicate call id
CLOSE_TOO_BIG = 1009  # frame over the size limit
CLOSE_TRY_LATER = 1013  # at capacity
CLOSE_INTERNAL = 1011

ENCODINGS = {"pcm_s16le": 2, "mulaw": 1, "alaw": 1, "f32le": 4}  # bytes per sample
SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
ROLES = ("customer", "agent")
_CALL_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")  # whole string: fullmatch, no trailing \n
MAX_METADATA_BYTES = 4096


class ProtocolError(ValueError):
    """A client message the server refuses.

    Attributes:
        code: machine-readable reason (``bad_json``, ``unsupported_encoding`` …).
        close_code: the websocket close code to end the connection with.
    """

    def __init__(self, code: str, message: str, *, close_code: int = CLOSE_POLICY) -> None:
        super().__init__(message)
        self.code = code
        self.close_code = close_code


@dataclass(frozen=True, slots=True)
class StreamStart:
    """A validated request to start a call."""

    call_id: str
    sample_rate: int
    encoding: str
    channels: int
    roles: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def frame_bytes(self) -> int:
        """Bytes in one sample frame (all channels)."""
        return ENCODINGS[self.encoding] * self.channels


def parse_json_object(text: str | bytes) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError("bad_json", f"message is not valid JSON: {exc}") from exc
    except RecursionError:
        raise ProtocolError("bad_json", "message is nested too deeply") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_json", "message must be a JSON object")
    return data


def validate_call_id(call_id: Any) -> str:
    if not isinstance(call_id, str) or not _CALL_ID.fullmatch(call_id):
        raise ProtocolError(
            "bad_call_id", "call_id must be 1-128 characters of letters, digits and . _ : -"
        )
    return call_id


def parse_start(data: dict[str, Any]) -> StreamStart:
    """Validate a native ``{"type": "start", ...}`` message."""
    if data.get("type") != "start":
        raise ProtocolError("expected_start", 'the first message must be {"type": "start", ...}')
    call_id = validate_call_id(data.get("call_id"))
    encoding = data.get("encoding", "pcm_s16le")
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise ProtocolError("unsupported_encoding",
                            f"encoding {encoding!r} is not one of {sorted(ENCODINGS)}",
                            close_code=CLOSE_UNSUPPORTED)
    rate = data.get("sample_rate")
    if isinstance(rate, bool) or not isinstance(rate, int) or rate not in SAMPLE_RATES:
        raise ProtocolError("unsupported_sample_rate",
                            f"sample_rate {rate!r} is not one of {list(SAMPLE_RATES)}",
                            close_code=CLOSE_UNSUPPORTED)
    if encoding in ("mulaw", "alaw") and rate != 8000:
        raise ProtocolError("unsupported_sample_rate", f"{encoding} audio must be 8000 Hz",
                            close_code=CLOSE_UNSUPPORTED)
    channels = data.get("channels", 1)
    if not isinstance(channels, int) or isinstance(channels, bool) or channels not in (1, 2):
        raise ProtocolError("unsupported_channels", "channels must be 1 or 2",
                            close_code=CLOSE_UNSUPPORTED)
    roles = data.get("roles", list(ROLES[:channels]))
    if (not isinstance(roles, list) or len(roles) != channels
            or any(not isinstance(r, str) or r not in ROLES for r in roles)
            or len(set(roles)) != len(roles)):
        raise ProtocolError("bad_roles",
                            f"roles must list {channels} distinct roles from {list(ROLES)}")
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ProtocolError("bad_metadata", "metadata must be a JSON object")
    try:
        encoded = json.dumps(metadata, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError):
        raise ProtocolError("bad_metadata", "metadata must be valid UTF-8 text without lone "
                            "surrogates, NaN or infinities") from None
    if len(encoded) > MAX_METADATA_BYTES:
        raise ProtocolError("bad_metadata", f"metadata over {MAX_METADATA_BYTES} bytes")
    return StreamStart(call_id, rate, encoding, channels, tuple(roles), metadata)


def decode_frame(data: bytes, start: StreamStart) -> np.ndarray:
    """Binary audio → float32 ``(samples, channels)`` in [-1, 1].

    Raises:
        ProtocolError: a byte count that is not a whole number of sample frames, or
            non-finite float samples.
    """
    if len(data) % start.frame_bytes:
        raise ProtocolError(
            "partial_frame",
            f"{len(data)} bytes is not a whole number of {start.frame_bytes}-byte sample frames "
            f"({start.encoding}, {start.channels} channel(s))",
        )
    if start.encoding == "pcm_s16le":
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    elif start.encoding == "f32le":
        samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
        if not np.isfinite(samples).all():
            raise ProtocolError("bad_samples", "f32le audio contains NaN or infinity")
        samples = np.clip(samples, -1.0, 1.0)
    elif start.encoding == "mulaw":
        samples = decode_mulaw(data).astype(np.float32) / 32768.0
    else:
        samples = decode_alaw(data).astype(np.float32) / 32768.0
    return samples.reshape(-1, start.channels)


# --- Twilio Media Streams -------------------------------------------------------------

TWILIO_TRACKS = {"inbound": "customer", "outbound": "agent"}
TWILIO_IGNORED = {"connected", "mark", "dtmf", "clear"}


@dataclass(frozen=True, slots=True)
class TwilioMedia:
    track: str
    chunk: int
    timestamp_ms: int
    payload: bytes


def parse_twilio_start(data: dict[str, Any], *, track_roles: dict[str, str]) -> StreamStart:
    """Twilio's ``start`` event → a StreamStart (one channel per track)."""
    start = data.get("start")
    if not isinstance(start, dict):
        raise ProtocolError("bad_twilio_start", "start event without a start object")
    params = start.get("customParameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("bad_twilio_start", "customParameters must be an object")
    call_id = validate_call_id(params.get("call_id") or start.get("callSid")
                               or data.get("streamSid") or start.get("streamSid"))
    fmt = start.get("mediaFormat") or {}
    if not isinstance(fmt, dict):
        raise ProtocolError("bad_twilio_start", "mediaFormat must be an object")
    encoding = fmt.get("encoding", "audio/x-mulaw")
    rate = fmt.get("sampleRate", 8000)
    if encoding != "audio/x-mulaw" or rate != 8000:
        raise ProtocolError("unsupported_encoding",
                            f"Twilio media must be audio/x-mulaw at 8000 Hz, got {encoding} {rate}",
                            close_code=CLOSE_UNSUPPORTED)
    tracks = start.get("tracks") or ["inbound"]
    if (not isinstance(tracks, list) or not tracks
            or any(not isinstance(t, str) or t not in track_roles for t in tracks)):
        raise ProtocolError("bad_twilio_start",
                            f"tracks must be a non-empty subset of {sorted(track_roles)}")
    roles = tuple(track_roles[t] for t in tracks)
    if len(set(roles)) != len(roles):
        raise ProtocolError("bad_twilio_start", "two tracks map to the same role")
    metadata = {k: v for k, v in params.items() if k != "call_id"}
    metadata.update({"twilio_stream_sid": data.get("streamSid") or start.get("streamSid"),
                     "twilio_call_sid": start.get("callSid"), "tracks": tracks})
    return StreamStart(call_id, 8000, "mulaw", len(roles), roles, metadata)


def parse_twilio_media(data: dict[str, Any], *, max_payload_bytes: int) -> TwilioMedia:
    media = data.get("media")
    if not isinstance(media, dict):
        raise ProtocolError("bad_twilio_media", "media event without a media object")
    payload = media.get("payload")
    if not isinstance(payload, str):
        raise ProtocolError("bad_twilio_media", "media.payload must be a base64 string")
    if len(payload) > 4 * ((max_payload_bytes + 2) // 3):
        raise ProtocolError("frame_too_big", f"media payload over {max_payload_bytes} bytes",
                            close_code=CLOSE_TOO_BIG)
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError("bad_twilio_media", f"media.payload is not base64: {exc}") from exc
    try:
        chunk = int(media.get("chunk", data.get("sequenceNumber", 0)))
        timestamp = int(media.get("timestamp", 0))
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError("bad_twilio_media", "chunk and timestamp must be integers") from exc
    if not 0 <= timestamp < 2**53 or not 0 <= chunk < 2**53:
        raise ProtocolError("bad_twilio_media", "chunk and timestamp must be integers in "
                            "[0, 2^53)")
    track = media.get("track", "inbound")
    if not isinstance(track, str):
        raise ProtocolError("bad_twilio_media", "media.track must be a string")
    return TwilioMedia(track, chunk, timestamp, raw)
