"""Twilio Media Streams (and the platforms that copy it) at ``/v1/twilio``: JSON events,
base64 μ-law ``media`` per track, reordered by timestamp with gaps filled; results come
back only with ``?results=1`` (Twilio ignores them)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from streamer.ingest.adapter import Adapter, CallEnd
from streamer.protocol import (
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED,
    ProtocolError,
    StreamStart,
    decode_samples,
    parse_json_object,
    validate_call_id,
    validate_metadata,
)

TWILIO_IGNORED = {"connected", "mark", "dtmf", "clear"}

#: A chunk stamped within this many milliseconds of where the audio received so far ends
#: follows it directly: platforms stamp chunks from a clock with jitter, and a chunk 2 ms
#: "early" is neither a duplicate to drop nor 2 ms "late" a gap to fill.
JITTER_MS = 10.0


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
    return StreamStart(call_id, 8000, "mulaw", len(roles), roles, validate_metadata(metadata))


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


class TwilioAdapter(Adapter):
    protocol = "twilio"
    path = "/v1/twilio"

    def __init__(self, link, **kwargs) -> None:
        super().__init__(link, **kwargs)
        self.send_results = (self.query.get("results") or ["0"])[0] == "1"
        self.track_roles = self.config.twilio_track_roles
        self.expected_ms: dict[int, float] = {}

    async def receive(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            raise ProtocolError("unexpected_binary",
                                "Twilio media streams send JSON text messages only")
        data = parse_json_object(message)
        event = data.get("event")
        if event == "media":
            if self.link.session is None:
                raise ProtocolError("audio_before_start", "media event before start")
            self._media(data)
        elif event == "start":
            if self.link.session is not None:
                raise ProtocolError("already_started", "a second start event")
            start = parse_twilio_start(data, track_roles=self.track_roles)
            await self.link.start(start, protocol=self.protocol, send_results=self.send_results)
        elif event == "stop":
            raise CallEnd("stop")
        elif event not in TWILIO_IGNORED:
            raise ProtocolError("unknown_event", f"unknown Twilio event {event!r}")

    def _media(self, data: dict) -> None:
        """Feed one media event by its timestamp, within ``JITTER_MS`` of the audio so far:
        what it repeats of audio already received (a duplicate, a late or resent packet) is
        dropped; a jump forward (packets never sent) is filled with silence, capped at
        max_gap_s."""
        session = self.link.session
        assert session is not None
        media = parse_twilio_media(data, max_payload_bytes=self.config.max_frame_bytes)
        role = self.track_roles.get(media.track)
        if role not in session.start.roles:
            return  # a track the start event did not announce: ignored, as Twilio's docs do
        channel = session.start.roles.index(role)
        samples = decode_samples(media.payload, session.start.encoding)[:, 0]
        per_ms = session.start.sample_rate / 1000
        expected = self.expected_ms.get(channel, float(media.timestamp_ms))
        late_ms = expected - media.timestamp_ms
        if late_ms > JITTER_MS:  # repeats audio received: keep what is new, if more than jitter
            new = len(samples) - int(round(late_ms * per_ms))
            if new <= JITTER_MS * per_ms:
                return
            samples = samples[-new:]
        elif late_ms < -JITTER_MS:
            self.link.fill_gap(-late_ms / 1000, self.config.max_gap_s, channel=channel)
            expected = float(media.timestamp_ms)
        self.expected_ms[channel] = expected + len(samples) / per_ms
        self.link.feed_channel(channel, samples)
