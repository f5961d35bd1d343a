"""What every ingest protocol shares: the validated start of a call, call-id and metadata
checks, decoding binary audio to float frames, and :class:`ProtocolError`, which carries
the websocket close code of a refusal. Pure functions; the protocols themselves are the
adapters in :mod:`streamer.ingest`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from models.audio import alaw_table, mulaw_table

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


def validate_metadata(metadata: Any) -> dict[str, Any]:
    """A JSON object of at most 4 KiB that Redis and browsers can carry."""
    if not isinstance(metadata, dict):
        raise ProtocolError("bad_metadata", "metadata must be a JSON object")
    try:
        encoded = json.dumps(metadata, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError):
        raise ProtocolError("bad_metadata", "metadata must be valid UTF-8 text without lone "
                            "surrogates, NaN or infinities") from None
    if len(encoded) > MAX_METADATA_BYTES:
        raise ProtocolError("bad_metadata", f"metadata over {MAX_METADATA_BYTES} bytes")
    return metadata


def decode_samples(data: bytes, encoding: str, channels: int = 1) -> np.ndarray:
    """Binary audio → float32 ``(samples, channels)`` in [-1, 1].

    Raises:
        ProtocolError: a byte count that is not a whole number of sample frames, or
            non-finite float samples.
    """
    frame_bytes = ENCODINGS[encoding] * channels
    if len(data) % frame_bytes:
        raise ProtocolError(
            "partial_frame",
            f"{len(data)} bytes is not a whole number of {frame_bytes}-byte sample frames "
            f"({encoding}, {channels} channel(s))",
        )
    # One numpy operation per message where it can be (every message of every call comes
    # here: 50 a second at Twilio's 20 ms): the scale is a power of two, so the product is
    # the same float as the int16 cast to float32 and divided.
    if encoding == "pcm_s16le":
        samples = np.frombuffer(data, dtype="<i2") * _INT16_SCALE
    elif encoding == "f32le":
        samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
        if not np.isfinite(samples).all():
            raise ProtocolError("bad_samples", "f32le audio contains NaN or infinity")
        samples = np.clip(samples, -1.0, 1.0)
    else:
        samples = _companded_table(encoding)[np.frombuffer(data, dtype=np.uint8)]
    return samples.reshape(-1, channels)


_INT16_SCALE = np.float32(1 / 32768)


@cache
def _companded_table(encoding: str) -> np.ndarray:
    """float32 sample of each μ-law or A-law code word."""
    table = mulaw_table() if encoding == "mulaw" else alaw_table()
    return table.astype(np.float32) * _INT16_SCALE


def decode_frame(data: bytes, start: StreamStart) -> np.ndarray:
    """One binary message of the call ``start`` describes → ``(samples, channels)``."""
    return decode_samples(data, start.encoding, start.channels)
