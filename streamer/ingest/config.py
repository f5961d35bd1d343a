"""Listening addresses and per-connection limits, shared by every ingest transport."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Twilio ``media.track`` → role.
TWILIO_TRACKS = {"inbound": "customer", "outbound": "agent"}


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """Listening addresses and per-connection limits.

    Attributes:
        token: when set, clients must present it: ``Authorization: Bearer <token>`` or
            ``?token=<token>`` (Twilio and mod_audio_fork cannot set headers), AudioHook's
            ``X-API-KEY``. AudioSocket has no credential: it listens on loopback unless
            told otherwise.
        max_frame_bytes: largest websocket message accepted (close 1009 beyond).
        start_timeout_s: time allowed between connecting and the call's start.
        max_gap_s: longest stretch of audio the platform says it did not send (Twilio
            timestamp gaps, AudioHook pauses and discards) filled with silence.
        max_messages_per_s, message_burst: sustained message rate per connection, and the
            burst allowed above it (close 1008 ``rate_limited`` beyond).
        max_speed, speed_burst_s: audio faster than ``max_speed`` × real time, after a head
            start of ``speed_burst_s`` seconds, is refused (close 1008 ``too_fast``).
        max_call_s: longest call, in seconds of audio (close 1008 ``max_duration``).
        max_connections_per_address: open connections per client IP (HTTP 429 beyond).
            Telephony platforms send many calls from few addresses: size it for them.
        ping_interval_s: a peer that has sent nothing for this long is pinged, and dropped
            if no pong comes within the same time again (a client that vanished without
            closing). A peer that keeps sending audio is alive even if it reads nothing.
            AudioSocket has no ping: a peer silent for twice this long is dropped.
        twilio_track_roles: Twilio ``media.track`` → role.
        audiosocket_port: TCP port of the Asterisk AudioSocket listener; ``None``: off.
        audiosocket_role: the role of AudioSocket's one channel.
        audiohook_client_secret: the AudioHook integration's client secret (base64): when
            set, every AudioHook connection must carry a valid HMAC-SHA256 signature.
        reuse_port: bind with ``SO_REUSEPORT`` so that several ingest processes share the
            ports and the kernel spreads connections over them (``serve --workers``).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    max_frame_bytes: int = 64 * 1024
    start_timeout_s: float = 10.0
    max_gap_s: float = 5.0
    max_messages_per_s: float = 500.0
    message_burst: int = 1000
    max_speed: float = 4.0
    speed_burst_s: float = 10.0
    max_call_s: float = 4 * 3600.0
    max_connections_per_address: int = 200
    ping_interval_s: float = 20.0
    twilio_track_roles: dict[str, str] = field(default_factory=lambda: dict(TWILIO_TRACKS))
    audiosocket_port: int | None = None
    audiosocket_role: str = "customer"
    reuse_port: bool = False
    audiohook_client_secret: str | None = None
