"""The websocket ingest transport: one port, a path per protocol adapter
(:data:`streamer.ingest.ADAPTERS`), plus ``GET /healthz``.

The transport owns everything protocols share: the HTTP handshake, the ingest token,
connections per address, message rate, audio pace and call length (through
:class:`~streamer.ingest.adapter.CallLink`), liveness, sending results, and the end of
every call, whichever way it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import Callable, Sequence
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from streamer.calls import CallSession
from streamer.ingest.adapter import (
    INTERNAL_ERROR,
    Adapter,
    CallEnd,
    CallLink,
    Guard,
    end_reason,
    new_guard,
)
from streamer.ingest.config import IngestConfig
from streamer.limits import AddressLimit
from streamer.monitor import Monitor
from streamer.protocol import CLOSE_GOING_AWAY, CLOSE_NORMAL, ProtocolError

log = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"


class IngestServer:
    """Websocket ingest for the adapters in ``adapters`` (path → adapter class)."""

    def __init__(self, monitor: Monitor, config: IngestConfig,
                 health: Callable[[], dict] | None = None,
                 adapters: dict[str, type[Adapter]] | None = None) -> None:
        from streamer.ingest import ADAPTERS  # the registry imports the adapters

        self.monitor = monitor
        self.config = config
        self.health = health or (lambda: {"status": "ok"})
        self.adapters = adapters if adapters is not None else ADAPTERS
        if config.audiohook_client_secret:  # refuse a secret that cannot be a key, at start
            from streamer.ingest.audiohook import client_key

            client_key(config.audiohook_client_secret)
        self.server: Server | None = None
        self.port = config.port
        self._connections: set[asyncio.Task] = set()
        self.addresses = AddressLimit(config.max_connections_per_address)

    async def start(self) -> None:
        self.server = await serve(
            self._handle, self.config.host, self.config.port,
            process_request=self._process_request, select_subprotocol=self._subprotocol,
            max_size=self.config.max_frame_bytes, compression=None,
            ping_interval=None,  # see _keepalive
            close_timeout=min(5.0, self.config.ping_interval_s), max_queue=16,
            reuse_port=self.config.reuse_port or None,
        )
        self.port = next(iter(self.server.sockets)).getsockname()[1]
        log.info("ingest listening on ws://%s:%d (%s)", self.config.host, self.port,
                 ", ".join(self.adapters))

    async def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close(close_connections=False)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def wait_connections(self, timeout_s: float) -> None:
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=timeout_s)

    # -- HTTP side of the handshake -------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == HEALTH_PATH:
            body = self.health()
            status = HTTPStatus.OK if body.get("status") == "ok" else HTTPStatus.SERVICE_UNAVAILABLE
            return _json_response(status, body)
        adapter = self.adapters.get(url.path)
        if adapter is None:
            return _json_response(HTTPStatus.NOT_FOUND, {
                "error": "not_found", "message": f"use one of {', '.join(self.adapters)}"})
        if self.addresses.full(_address(connection)):
            return _json_response(HTTPStatus.TOO_MANY_REQUESTS, {
                "error": "too_many_connections",
                "message": f"at most {self.addresses.limit} connections per client address"})
        headers = _headers(request)
        query = parse_qs(url.query)
        if self.config.token and not hmac.compare_digest(
                adapter.credential(headers, query).encode(), self.config.token.encode()):
            # Same answer whatever the call id: failures reveal nothing about live calls.
            return _json_response(HTTPStatus.UNAUTHORIZED, {
                "error": "unauthorized", "message": "missing or wrong ingest token"})
        refusal = adapter.check_handshake(headers, query, self.config, target=request.path)
        if refusal is not None:
            return _json_response(HTTPStatus(refusal[0]), {"error": refusal[1],
                                                           "message": refusal[2]})
        return None

    def _subprotocol(self, connection: ServerConnection, offered: Sequence[Subprotocol]
                     ) -> Subprotocol | None:
        """The platform's subprotocol when it offers one its adapter speaks (mod_audio_fork
        offers one and drops a server that does not answer it); none otherwise."""
        adapter = self.adapters.get(urlsplit(connection.request.path).path)  # type: ignore[union-attr]
        for name in adapter.subprotocols if adapter else ():
            if name in offered:
                return Subprotocol(name)
        return None

    # -- websocket side -------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        task = asyncio.current_task()
        self._connections.add(task)  # type: ignore[arg-type]
        address = _address(connection)
        self.addresses.acquire(address)
        guard = new_guard(self.config)
        link = CallLink(self.monitor, guard, connection.send)
        keepalive = asyncio.create_task(self._keepalive(connection, guard))
        try:
            request = connection.request
            assert request is not None
            url = urlsplit(request.path)
            adapter = self.adapters[url.path](
                link, query=parse_qs(url.query), headers=_headers(request),
                config=self.config)
            await self._serve(connection, adapter, link)
        finally:
            link.release()
            keepalive.cancel()
            self.addresses.release(address)
            self._connections.discard(task)  # type: ignore[arg-type]

    async def _serve(self, connection: ServerConnection, adapter: Adapter, link: CallLink
                     ) -> None:
        writer: asyncio.Task | None = None

        def on_start(session: CallSession) -> None:
            nonlocal writer
            writer = asyncio.create_task(self._writer(connection, session, adapter))

        link.on_start = on_start
        reason, error = "disconnect", None
        deadline = asyncio.get_running_loop().time() + self.config.start_timeout_s
        try:
            while True:
                if link.session is None:
                    message = await self._before_start(connection, deadline)
                else:
                    message = await connection.recv()
                link.guard.message()
                await adapter.receive(message)
        except CallEnd as end:
            reason = end.reason
        except ProtocolError as exc:
            reason, error = end_reason(exc), exc
        except ConnectionClosed as closed:
            reason = adapter.closed_by_peer(closed.rcvd.code if closed.rcvd else None)
        except Exception:  # whatever an adapter meets, the call ends cleanly
            log.exception("unexpected error in the %s adapter", adapter.protocol)
            reason, error = "error", INTERNAL_ERROR
        session = link.session
        if session is None:
            if error is not None:
                await self._refuse(connection, adapter, error)
            return
        if not session.ended:
            await self.monitor.close_call(session, reason)
            for message in adapter.ended(session, reason):
                session.outbox.put(message)
        if error is not None:
            for message in adapter.refusal(error):
                session.outbox.put(message)
        session.outbox.close()
        if writer is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(writer), 5.0)
            writer.cancel()
        if error is not None:
            await self._linger(connection, adapter)
        with contextlib.suppress(ConnectionClosed):
            if error is not None:
                await connection.close(error.close_code, error.code)
            else:
                await connection.close(CLOSE_NORMAL, reason)

    async def _before_start(self, connection: ServerConnection, deadline: float) -> str | bytes:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(connection.recv(), max(remaining, 0.001))
        except TimeoutError:
            raise ProtocolError("start_timeout", "the call did not start within "
                                f"{self.config.start_timeout_s:g} s") from None

    async def _refuse(self, connection: ServerConnection, adapter: Adapter,
                      error: ProtocolError) -> None:
        with contextlib.suppress(ConnectionClosed):
            for message in adapter.refusal(error):
                await connection.send(message)
            await self._linger(connection, adapter)
            await connection.close(error.close_code, error.code)

    async def _linger(self, connection: ServerConnection, adapter: Adapter) -> None:
        with contextlib.suppress(ConnectionClosed, TimeoutError, ProtocolError):
            await asyncio.wait_for(adapter.linger(connection.recv), 2.0)

    async def _keepalive(self, connection: ServerConnection, guard: Guard) -> None:
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

    async def _writer(self, connection: ServerConnection, session: CallSession,
                      adapter: Adapter) -> None:
        """Send the call's outbox; a stalled reader only loses its own oldest results."""
        while (message := await session.outbox.get()) is not None:
            try:
                await connection.send(message)
            except ConnectionClosed:
                return
        if session.end_reason == "shutdown":
            # The server is stopping: everything was sent, now say goodbye.
            with contextlib.suppress(ConnectionClosed):
                for message in adapter.shutting_down():
                    await connection.send(message)
                await connection.close(CLOSE_GOING_AWAY, "server shutting down")


def _address(connection: ServerConnection) -> str:
    peer = connection.remote_address
    return str(peer[0]) if peer else "?"


def _headers(request: Request) -> dict[str, str]:
    """Request headers, names lower-cased (the first of repeated ones)."""
    out: dict[str, str] = {}
    for name, value in request.headers.raw_items():
        out.setdefault(name.lower(), value)
    return out


def _json_response(status: HTTPStatus, body: dict) -> Response:
    data = json.dumps(body).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                       ("Connection", "close")])
    return Response(status.value, status.phrase, headers, data)
