"""The websocket ingest server: ``/v1/stream`` (native) and ``/v1/twilio`` (Twilio Media
Streams and the platforms that copy it), plus ``GET /healthz`` on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from streamer.calls import CallSession
from streamer.limits import AddressLimit, AudioPacer, TokenBucket
from streamer.monitor import Monitor
from streamer.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    TWILIO_IGNORED,
    TWILIO_TRACKS,
    ProtocolError,
    decode_frame,
    parse_json_object,
    parse_start,
    parse_twilio_media,
    parse_twilio_start,
)
from streamer.schema import SCHEMA_VERSION, error_message

log = logging.getLogger(__name__)

NATIVE_PATH = "/v1/stream"
TWILIO_PATH = "/v1/twilio"
HEALTH_PATH = "/healthz"


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """Listening address and per-connection limits.

    Attributes:
        token: when set, clients must send ``Authorization: Bearer <token>`` or
            ``?token=<token>`` (Twilio cannot set headers).
        max_frame_bytes: largest websocket message accepted (close 1009 beyond).
        start_timeout_s: time allowed between connecting and the start message.
        max_gap_s: longest Twilio timestamp gap filled with silence.
        max_messages_per_s, message_burst: sustained message rate per connection, and the
            burst allowed above it (close 1008 ``rate_limited`` beyond).
        max_speed, speed_burst_s: audio faster than ``max_speed`` × real time, after a head
            start of ``speed_burst_s`` seconds, is refused (close 1008 ``too_fast``).
        max_call_s: longest call, in seconds of audio (close 1008 ``max_duration``).
        max_connections_per_address: open websocket connections per client IP (HTTP 429
            beyond). Telephony platforms send many calls from few addresses: size it for them.
        ping_interval_s: a peer that has sent nothing for this long is pinged, and dropped
            if no pong comes within the same time again (a client that vanished without
            closing). A peer that keeps sending audio is alive even if it reads nothing.
        twilio_track_roles: Twilio ``media.track`` → role.
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


class IngestServer:
    def __init__(self, monitor: Monitor, config: IngestConfig,
                 health: Callable[[], dict] | None = None) -> None:
        self.monitor = monitor
        self.config = config
        self.health = health or (lambda: {"status": "ok"})
        self.server: Server | None = None
        self.port = config.port
        self._connections: set[asyncio.Task] = set()
        self.addresses = AddressLimit(config.max_connections_per_address)

    async def start(self) -> None:
        self.server = await serve(
            self._handle, self.config.host, self.config.port,
            process_request=self._process_request, max_size=self.config.max_frame_bytes,
            compression=None, ping_interval=None,  # see _keepalive
            close_timeout=min(5.0, self.config.ping_interval_s), max_queue=16,
        )
        self.port = next(iter(self.server.sockets)).getsockname()[1]
        log.info("ingest listening on ws://%s:%d%s and %s", self.config.host, self.port,
                 NATIVE_PATH, TWILIO_PATH)

    async def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close(close_connections=False)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    # -- HTTP side of the handshake -------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == HEALTH_PATH:
            body = self.health()
            status = HTTPStatus.OK if body.get("status") == "ok" else HTTPStatus.SERVICE_UNAVAILABLE
            return _json_response(status, body)
        if url.path not in (NATIVE_PATH, TWILIO_PATH):
            return _json_response(HTTPStatus.NOT_FOUND, {
                "error": "not_found", "message": f"use {NATIVE_PATH} or {TWILIO_PATH}"})
        if self.addresses.full(_address(connection)):
            return _json_response(HTTPStatus.TOO_MANY_REQUESTS, {
                "error": "too_many_connections",
                "message": f"at most {self.addresses.limit} connections per client address"})
        if self.config.token and not self._authorised(request, url.query):
            # Same answer whatever the call id: failures reveal nothing about live calls.
            return _json_response(HTTPStatus.UNAUTHORIZED, {
                "error": "unauthorized", "message": "missing or wrong ingest token"})
        return None

    def _authorised(self, request: Request, query: str) -> bool:
        expected = self.config.token.encode()  # type: ignore[union-attr]
        header = request.headers.get("Authorization", "")
        supplied = header[7:] if header.lower().startswith("bearer ") else ""
        if not supplied:
            supplied = (parse_qs(query).get("token") or [""])[0]
        return hmac.compare_digest(supplied.encode(), expected)

    # -- websocket side -------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        task = asyncio.current_task()
        self._connections.add(task)  # type: ignore[arg-type]
        address = _address(connection)
        self.addresses.acquire(address)
        c = self.config
        guard = _Guard(TokenBucket(c.max_messages_per_s, c.message_burst),
                       AudioPacer(c.max_speed, c.speed_burst_s), c.max_call_s)
        keepalive = asyncio.create_task(self._keepalive(connection, guard))
        try:
            url = urlsplit(connection.request.path)  # type: ignore[union-attr]
            if url.path == TWILIO_PATH:
                want_results = (parse_qs(url.query).get("results") or ["0"])[0] == "1"
                await self._twilio(connection, guard, send_results=want_results)
            else:
                await self._native(connection, guard)
        finally:
            keepalive.cancel()
            self.addresses.release(address)
            self._connections.discard(task)  # type: ignore[arg-type]

    async def _refuse(self, connection: ServerConnection, error: ProtocolError) -> None:
        with contextlib.suppress(ConnectionClosed):
            await connection.send(error_message(error.code, str(error)))
            await connection.close(error.close_code, error.code)

    async def _first_message(self, connection: ServerConnection) -> str | bytes:
        try:
            return await asyncio.wait_for(connection.recv(), self.config.start_timeout_s)
        except TimeoutError:
            raise ProtocolError("start_timeout",
                                f"no start message within {self.config.start_timeout_s} s") from None

    async def _keepalive(self, connection: ServerConnection, guard: _Guard) -> None:
        """Drop a peer that neither sends nor answers pings. Liveness is judged on what it
        sends: websockets' own keep-alive would also drop a live client whose pongs queue
        behind results it reads slowly."""
        interval = self.config.ping_interval_s
        while True:
            await asyncio.sleep(interval - min(interval, guard.idle_s))
            if guard.idle_s < interval:
                continue
            try:
                pong = await connection.ping()
                await asyncio.wait_for(pong, interval)
            except ConnectionClosed:
                return
            except TimeoutError:
                log.info("dropping a peer silent for %.0f s", guard.idle_s)
                connection.transport.abort()
                return
            guard.heard()

    async def _native(self, connection: ServerConnection, guard: _Guard) -> None:
        try:
            first = await self._first_message(connection)
            if isinstance(first, bytes):
                raise ProtocolError("audio_before_start",
                                    'send {"type": "start", ...} before any audio')
            start = parse_start(parse_json_object(first))
            session = await self.monitor.start_call(start, protocol="native")
        except ProtocolError as refusal:
            await self._refuse(connection, refusal)
            return
        except ConnectionClosed:
            return
        writer = asyncio.create_task(self._writer(connection, session))
        session.outbox.put(json.dumps({
            "v": SCHEMA_VERSION, "type": "started", "call_id": start.call_id,
            "labels": list(self.monitor.labels), "window_s": self.monitor.windowing.window_s,
            "hop_s": self.monitor.windowing.hop_s,
            # The pace this server accepts: a client may send this fast (see --fast).
            "max_speed": self.config.max_speed, "speed_burst_s": self.config.speed_burst_s,
        }))
        reason = "disconnect"
        error: ProtocolError | None = None
        try:
            async for message in connection:
                guard.message()
                if isinstance(message, bytes):
                    frames = decode_frame(message, start)
                    self.monitor.feed(session, frames)
                    guard.audio(len(frames) / start.sample_rate)
                    continue
                data = parse_json_object(message)
                kind = data.get("type")
                if kind == "stop":
                    reason = "stop"
                    break
                if kind == "start":
                    raise ProtocolError("already_started", "this connection already started a call")
                raise ProtocolError("unknown_message", f"unknown message type {kind!r}")
        except ProtocolError as exc:
            reason, error = _error_reason(exc), exc
        except ConnectionClosed:
            pass
        except Exception:  # whatever a handler meets, the call ends cleanly
            log.exception("call %s: unexpected error in the native handler", session.call_id)
            reason, error = "error", _INTERNAL
        await self._end(connection, session, writer, reason, error)

    async def _twilio(self, connection: ServerConnection, guard: _Guard, *,
                      send_results: bool) -> None:
        session: CallSession | None = None
        expected_ms: dict[int, int] = {}
        reason, error = "disconnect", None
        writer = None
        try:
            async for message in connection:
                guard.message()
                if isinstance(message, bytes):
                    raise ProtocolError("unexpected_binary",
                                        "Twilio media streams send JSON text messages only")
                data = parse_json_object(message)
                event = data.get("event")
                if event == "media":
                    if session is None:
                        raise ProtocolError("audio_before_start", "media event before start")
                    seconds = self._twilio_media(session, data, expected_ms)
                    guard.audio(seconds / session.start.channels)
                elif event == "start":
                    if session is not None:
                        raise ProtocolError("already_started", "a second start event")
                    start = parse_twilio_start(data, track_roles=self.config.twilio_track_roles)
                    session = await self.monitor.start_call(start, protocol="twilio",
                                                     send_results=send_results)
                    writer = asyncio.create_task(self._writer(connection, session))
                elif event == "stop":
                    reason = "stop"
                    break
                elif event not in TWILIO_IGNORED:
                    raise ProtocolError("unknown_event", f"unknown Twilio event {event!r}")
        except ProtocolError as exc:
            reason, error = _error_reason(exc), exc
        except ConnectionClosed:
            pass
        except Exception:  # whatever a handler meets, the call ends cleanly
            log.exception("unexpected error in the Twilio handler")
            reason, error = "error", _INTERNAL
        if session is None:
            if error is not None:
                await self._refuse(connection, error)
            return
        await self._end(connection, session, writer, reason, error)

    def _twilio_media(self, session: CallSession, data: dict, expected_ms: dict[int, int]
                      ) -> float:
        """Feed one media event; returns the seconds of call audio it made, gap fill
        included (silence filled in counts against the speed and length limits too)."""
        media = parse_twilio_media(data, max_payload_bytes=self.config.max_frame_bytes)
        role = self.config.twilio_track_roles.get(media.track)
        if role not in session.start.roles:
            return 0.0  # a track the start event did not announce: ignored, as Twilio's own docs do
        channel = session.start.roles.index(role)
        samples = _decode_mulaw_float(media.payload)
        # Order by timestamp: a chunk from the past (duplicate or late) is dropped; a jump
        # forward (packets Twilio never sent) is filled with silence, capped at max_gap_s.
        expected = expected_ms.get(channel, media.timestamp_ms)
        if media.timestamp_ms < expected:
            return 0.0
        gap_ms = min(media.timestamp_ms - expected, int(1000 * self.config.max_gap_s))
        if gap_ms > 0:
            self.monitor.feed_channel(session, channel, np.zeros(gap_ms * 8, dtype=np.float32))
        expected_ms[channel] = media.timestamp_ms + len(media.payload) // 8
        self.monitor.feed_channel(session, channel, samples)
        return max(gap_ms, 0) / 1000 + len(samples) / 8000

    async def _writer(self, connection: ServerConnection, session: CallSession) -> None:
        """Send the call's results; a stalled reader only loses its own oldest results."""
        while (message := await session.outbox.get()) is not None:
            if not session.send_results:
                continue
            try:
                await connection.send(message)
            except ConnectionClosed:
                return
        if session.end_reason == "shutdown":
            # The server is stopping: everything was sent, now say goodbye.
            with contextlib.suppress(ConnectionClosed):
                await connection.close(CLOSE_GOING_AWAY, "server shutting down")

    async def _end(self, connection: ServerConnection, session: CallSession,
                   writer: asyncio.Task | None, reason: str, error: ProtocolError | None) -> None:
        if not session.ended:
            await self.monitor.close_call(session, reason)
            session.outbox.put(session.ended_message())
        if error is not None:
            session.outbox.put(error_message(error.code, str(error)))
        session.outbox.close()
        if writer is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(writer), 5.0)
            writer.cancel()
        with contextlib.suppress(ConnectionClosed):
            if error is not None:
                await connection.close(error.close_code, error.code)
            else:
                await connection.close(CLOSE_NORMAL, reason)

    async def wait_connections(self, timeout_s: float) -> None:
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=timeout_s)


class _Guard:
    """One connection's limits (message rate, audio pace, call length) and liveness."""

    def __init__(self, bucket: TokenBucket, pacer: AudioPacer, max_call_s: float) -> None:
        self.bucket = bucket
        self.pacer = pacer
        self.max_call_s = max_call_s
        self.last_heard = time.monotonic()

    @property
    def idle_s(self) -> float:
        return time.monotonic() - self.last_heard

    def heard(self) -> None:
        self.last_heard = time.monotonic()

    def message(self) -> None:
        self.last_heard = time.monotonic()
        if not self.bucket.take():
            raise ProtocolError("rate_limited", f"more than {self.bucket.rate:g} messages per "
                                f"second (burst {self.bucket.burst:g})")

    def audio(self, seconds: float) -> None:
        ahead = self.pacer.add(seconds)
        if self.pacer.audio_s > self.max_call_s:
            raise ProtocolError("max_duration", f"calls are limited to {self.max_call_s:g} s")
        if ahead > 0:
            raise ProtocolError(
                "too_fast", f"audio arrives faster than {self.pacer.speed:g}x real time (after "
                f"{self.pacer.burst_s:g} s of head start): send it as it is spoken")


LIMIT_CODES = frozenset({"rate_limited", "max_duration", "too_fast"})


#: What a peer is told when the server itself failed on its message.
_INTERNAL = ProtocolError("internal_error", "the server could not process a message; the call "
                          "was ended", close_code=CLOSE_INTERNAL)


def _error_reason(error: ProtocolError) -> str:
    """``call_ended`` reason for a call ended by a refusal."""
    return "limit" if error.code in LIMIT_CODES else "error"


def _address(connection: ServerConnection) -> str:
    peer = connection.remote_address
    return str(peer[0]) if peer else "?"


def _decode_mulaw_float(payload: bytes) -> np.ndarray:
    from streamer.codecs import decode_mulaw

    return decode_mulaw(payload).astype(np.float32) / 32768.0


def _json_response(status: HTTPStatus, body: dict) -> Response:
    data = json.dumps(body).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                       ("Connection", "close")])
    return Response(status.value, status.phrase, headers, data)


