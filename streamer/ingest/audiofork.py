"""FreeSWITCH ``mod_audio_fork`` at ``/v1/audiofork``.

``uuid_audio_fork <uuid> start <url> <mix-type> <sampling-rate> <metadata>`` opens a
websocket (subprotocol ``audio.drachtio.org``, answered when offered), sends the metadata as
one text frame, then binary frames of 16-bit little-endian linear PCM: one channel
(``mono``: the caller; ``mixed``: both parties in one), or two interleaved (``stereo``:
caller, then callee). The module does not say which mix or rate it chose, so the URL does:
``?mix=stereo&rate=16k`` (the same words as the command), or the metadata's ``mix`` and
``rate``. The call id is ``call_id`` in the URL, or the metadata's ``call_id``, ``callId``,
``callid``, ``call_uuid`` or ``uuid``.

The call ends when FreeSWITCH closes the socket (``uuid_audio_fork stop``, hang-up). Later
text frames (``send_text``: DTMF and the like) are ignored. A refusal
is a ``{"type": "error", "data": {...}}`` text frame, which the module raises as its
``mod_audio_fork::error`` event, then the close.
"""

from __future__ import annotations

import ast
import json
from typing import Any

from streamer.ingest.adapter import Adapter
from streamer.protocol import (
    CLOSE_UNSUPPORTED,
    MAX_METADATA_BYTES,
    ProtocolError,
    StreamStart,
    decode_frame,
    validate_call_id,
    validate_metadata,
)

SUBPROTOCOLS = ("audio.drachtio.org", "audiostream.drachtio.org")
MIXES = {"mono": ("customer",), "mixed": ("customer",), "stereo": ("customer", "agent")}
RATES = {"8k": 8000, "8000": 8000, "16k": 16000, "16000": 16000}
CALL_ID_KEYS = ("call_id", "callId", "callid", "call_uuid", "uuid")


def parse_metadata(text: str) -> dict[str, Any]:
    """The first text frame: a JSON object; the single-quoted dictionaries FreeSWITCH
    dialplans write (double quotes are awkward there) are read too; anything else is kept
    as text."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_METADATA_BYTES:
        raise ProtocolError("bad_metadata", f"metadata over {MAX_METADATA_BYTES} bytes")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        try:
            data = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            data = None
    if isinstance(data, dict) and all(isinstance(k, str) for k in data):
        return data
    return {"text": text}


def parse_fork_start(query: dict[str, list[str]], metadata: dict[str, Any]) -> StreamStart:
    def pick(*names: str) -> Any:
        for name in names:
            if query.get(name):
                return query[name][0]
        for name in names:
            if metadata.get(name) not in (None, ""):
                return metadata[name]
        return None

    call_id = pick(*CALL_ID_KEYS)
    if call_id is None:
        raise ProtocolError("missing_call_id", "no call id: add ?call_id=${uuid} to the URL or "
                            "call_id to the metadata")
    call_id = validate_call_id(str(call_id))
    rate = pick("rate", "sampling_rate")
    if rate is None:
        raise ProtocolError("missing_rate", "say the sampling rate the fork was started with: "
                            "?rate=8k or ?rate=16k", close_code=CLOSE_UNSUPPORTED)
    if str(rate) not in RATES:
        raise ProtocolError("unsupported_sample_rate", f"rate {rate!r} is not 8k or 16k",
                            close_code=CLOSE_UNSUPPORTED)
    mix = pick("mix", "mix_type") or "mono"
    if mix not in MIXES:
        raise ProtocolError("unsupported_mix", f"mix {mix!r} is not one of {sorted(MIXES)}",
                            close_code=CLOSE_UNSUPPORTED)
    roles = MIXES[mix]
    meta = {k: v for k, v in metadata.items() if k not in CALL_ID_KEYS}
    meta["mix"] = mix
    return StreamStart(call_id, RATES[str(rate)], "pcm_s16le", len(roles), roles,
                       validate_metadata(meta))


class AudioForkAdapter(Adapter):
    protocol = "audiofork"
    path = "/v1/audiofork"
    subprotocols = SUBPROTOCOLS

    async def receive(self, message: str | bytes) -> None:
        session = self.link.session
        if session is None:
            metadata = parse_metadata(message) if isinstance(message, str) else {}
            start = parse_fork_start(self.query, metadata)
            session = await self.link.start(start, protocol=self.protocol, send_results=False)
            if isinstance(message, str):
                return
        if isinstance(message, bytes):  # later text frames (send_text, DTMF) are ignored
            self.link.feed(decode_frame(message, session.start))

    def closed_by_peer(self, code: int | None) -> str:
        # The module ends a fork by closing the socket: that is its "stop".
        return "stop" if code in (1000, 1001) else "disconnect"

    def refusal(self, error: ProtocolError) -> list[str]:
        return [json.dumps({"type": "error",
                            "data": {"code": error.code, "message": str(error)}})]
