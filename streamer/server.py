"""The websocket ingest server: ``/v1/stream`` (native) and ``/v1/twilio`` (Twilio Media
Streams and the platforms that copy it), plus ``GET /healthz`` on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
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
from streamer.monitor import Monitor
from streamer.protocol import (
    CLOSE_GOING_AWAY,
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
        twilio_track_roles: Twilio ``media.track`` → role.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    max_frame_bytes: int = 64 * 1024
    start_timeout_s: float = 10.0
    max_gap_s: float = 5.0
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

    async def start(self) -> None:
        self.server = await serve(
            self._handle, self.config.host, self.config.port,
            process_request=self._process_request, max_size=self.config.max_frame_bytes,
            compression=None, ping_interval=20, ping_timeout=20, max_queue=64,
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
        try:
            url = urlsplit(connection.request.path)  # type: ignore[union-attr]
            if url.path == TWILIO_PATH:
                want_results = (parse_qs(url.query).get("results") or ["0"])[0] == "1"
                await self._twilio(connection, send_results=want_results)
            else:
                await self._native(connection)
        finally:
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

    async def _native(self, connection: ServerConnection) -> None:
        try:
            first = await self._first_message(connection)
            if isinstance(first, bytes):
                raise ProtocolError("audio_before_start",
                                    'send {"type": "start", ...} before any audio')
            start = parse_start(parse_json_object(first))
            session = self.monitor.open_call(start, protocol="native")
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
        }))
        reason = "disconnect"
        error: ProtocolError | None = None
        try:
            async for message in connection:
                if isinstance(message, bytes):
                    self.monitor.feed(session, decode_frame(message, start))
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
            reason, error = "error", exc
        except ConnectionClosed:
            pass
        await self._end(connection, session, writer, reason, error)

    async def _twilio(self, connection: ServerConnection, *, send_results: bool) -> None:
        session: CallSession | None = None
        expected_ms: dict[int, int] = {}
        reason, error = "disconnect", None
        writer = None
        try:
            async for message in connection:
                if isinstance(message, bytes):
                    raise ProtocolError("unexpected_binary",
                                        "Twilio media streams send JSON text messages only")
                data = parse_json_object(message)
                event = data.get("event")
                if event == "media":
                    if session is None:
                        raise ProtocolError("audio_before_start", "media event before start")
                    self._twilio_media(session, data, expected_ms)
                elif event == "start":
                    if session is not None:
                        raise ProtocolError("already_started", "a second start event")
                    start = parse_twilio_start(data, track_roles=self.config.twilio_track_roles)
                    session = self.monitor.open_call(start, protocol="twilio",
                                                     send_results=send_results)
                    writer = asyncio.create_task(self._writer(connection, session))
                elif event == "stop":
                    reason = "stop"
                    break
                elif event not in TWILIO_IGNORED:
                    raise ProtocolError("unknown_event", f"unknown Twilio event {event!r}")
        except ProtocolError as exc:
            reason, error = "error", exc
        except ConnectionClosed:
            pass
        if session is None:
            if error is not None:
                await self._refuse(connection, error)
            return
        await self._end(connection, session, writer, reason, error)

    def _twilio_media(self, session: CallSession, data: dict, expected_ms: dict[int, int]) -> None:
        media = parse_twilio_media(data, max_payload_bytes=self.config.max_frame_bytes)
        role = self.config.twilio_track_roles.get(media.track)
        if role not in session.start.roles:
            return  # a track the start event did not announce: ignored, as Twilio's own docs do
        channel = session.start.roles.index(role)
        samples = _decode_mulaw_float(media.payload)
        # Order by timestamp: a chunk from the past (duplicate or late) is dropped; a jump
        # forward (packets Twilio never sent) is filled with silence, capped at max_gap_s.
        expected = expected_ms.get(channel, media.timestamp_ms)
        if media.timestamp_ms < expected:
            return
        gap_ms = min(media.timestamp_ms - expected, int(1000 * self.config.max_gap_s))
        if gap_ms > 0:
            self.monitor.feed_channel(session, channel, np.zeros(gap_ms * 8, dtype=np.float32))
        expected_ms[channel] = media.timestamp_ms + len(media.payload) // 8
        self.monitor.feed_channel(session, channel, samples)

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


def _decode_mulaw_float(payload: bytes) -> np.ndarray:
    from streamer.codecs import decode_mulaw

    return decode_mulaw(payload).astype(np.float32) / 32768.0


def _json_response(status: HTTPStatus, body: dict) -> Response:
    data = json.dumps(body).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                       ("Connection", "close")])
    return Response(status.value, status.phrase, headers, data)


