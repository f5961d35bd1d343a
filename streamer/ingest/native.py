"""callmon's own protocol at ``/v1/stream``: a JSON ``start``, binary audio frames in the
announced encoding, a JSON ``stop``; results, alerts and ``ended`` come back on the socket
(docs/protocol.md)."""

from __future__ import annotations

from typing import Any

from streamer.ingest.adapter import Adapter, CallEnd
from streamer.protocol import (
    CLOSE_UNSUPPORTED,
    ENCODINGS,
    ROLES,
    SAMPLE_RATES,
    ProtocolError,
    StreamStart,
    decode_frame,
    parse_json_object,
    validate_call_id,
    validate_metadata,
)
from streamer.schema import started_message


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
    metadata = validate_metadata(data.get("metadata", {}))
    return StreamStart(call_id, rate, encoding, channels, tuple(roles), metadata)


class NativeAdapter(Adapter):
    protocol = "native"
    path = "/v1/stream"

    async def receive(self, message: str | bytes) -> None:
        session = self.link.session
        if session is None:
            if isinstance(message, bytes):
                raise ProtocolError("audio_before_start",
                                    'send {"type": "start", ...} before any audio')
            start = parse_start(parse_json_object(message))
            session = await self.link.start(start, protocol=self.protocol, send_results=True)
            c, w = self.config, self.link.monitor.windowing
            await self.link.reply(started_message(
                start.call_id, labels=list(self.link.monitor.labels), window_s=w.window_s,
                hop_s=w.hop_s, max_speed=c.max_speed, speed_burst_s=c.speed_burst_s))
            return
        if isinstance(message, bytes):
            self.link.feed(decode_frame(message, session.start))
            return
        kind = parse_json_object(message).get("type")
        if kind == "stop":
            raise CallEnd("stop")
        if kind == "start":
            raise ProtocolError("already_started", "this connection already started a call")
        raise ProtocolError("unknown_message", f"unknown message type {kind!r}")
