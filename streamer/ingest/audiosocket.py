"""Asterisk AudioSocket: a TCP listener on its own port (``--audiosocket-port``).

Every message is a 3-byte header — one byte of kind, two bytes of payload length (big
endian) — and the payload. Asterisk sends the call's UUID (kind ``0x01``, 16 bytes; it
becomes the call id), then audio: 16-bit signed little-endian linear PCM, mono, at 8 kHz
(kind ``0x10``, what the ``AudioSocket()`` dialplan application sends) or at the higher
rates of the kinds ``0x11``-``0x18``. ``0x00`` is the hang-up (closing the socket is one
too), ``0x03`` a DTMF digit (ignored), ``0xff`` an error on Asterisk's side (the call ends,
reason ``error``). callmon refuses bad input with an ``0xff`` message whose payload is its
error code in ASCII (``partial_frame``, ``too_fast`` …), then closes.

AudioSocket carries no credential: the listener binds where ``serve`` binds, and beyond
loopback belongs behind a firewall that admits only the Asterisk hosts. Its one channel is
``audiosocket_role`` (the customer unless configured).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import uuid

from streamer.calls import CallSession
from streamer.ingest.adapter import INTERNAL_ERROR, CallEnd, CallLink, end_reason, new_guard
from streamer.ingest.config import IngestConfig
from streamer.limits import AddressLimit
from streamer.monitor import Monitor
from streamer.protocol import (
    CLOSE_UNSUPPORTED,
    ProtocolError,
    StreamStart,
    decode_samples,
)

log = logging.getLogger(__name__)

KIND_HANGUP = 0x00
KIND_UUID = 0x01
KIND_DTMF = 0x03
KIND_ERROR = 0xFF
#: Audio kinds → sample rate (16-bit signed linear, mono).
AUDIO_RATES = {0x10: 8000, 0x11: 12000, 0x12: 16000, 0x13: 24000, 0x14: 32000, 0x15: 44100,
               0x16: 48000, 0x17: 96000, 0x18: 192000}
IGNORED = frozenset({0x02, KIND_DTMF})  # DTMF (0x02 in some forks)
HEADER = struct.Struct(">BH")


def message(kind: int, payload: bytes = b"") -> bytes:
    """One AudioSocket message."""
    return HEADER.pack(kind, len(payload)) + payload


class AudioSocketCall:
    """The AudioSocket protocol of one connection: messages → the call (the adapter)."""

    protocol = "audiosocket"

    def __init__(self, link: CallLink, config: IngestConfig) -> None:
        self.link = link
        self.config = config
        self.call_id: str | None = None
        self.rate: int | None = None

    async def receive(self, kind: int, payload: bytes) -> None:
        if kind == KIND_HANGUP:
            raise CallEnd("stop")
        if kind == KIND_UUID:
            if self.call_id is not None:
                raise ProtocolError("already_started", "a second UUID on one connection")
            if len(payload) != 16:
                raise ProtocolError("bad_uuid", f"the UUID payload must be 16 bytes, got "
                                    f"{len(payload)}")
            self.call_id = str(uuid.UUID(bytes=payload))
        elif kind in AUDIO_RATES:
            await self._audio(AUDIO_RATES[kind], payload)
        elif kind == KIND_ERROR:
            code = payload[0] if payload else 0
            log.info("AudioSocket peer reported error 0x%02x on call %s", code, self.call_id)
            raise CallEnd("error")
        elif kind not in IGNORED:
            raise ProtocolError("unknown_kind", f"unknown AudioSocket message kind 0x{kind:02x}")

    async def _audio(self, rate: int, payload: bytes) -> None:
        if self.call_id is None:
            raise ProtocolError("audio_before_start", "audio before the UUID message")
        if self.rate is None:
            self.rate = rate
            role = self.config.audiosocket_role
            await self.link.start(StreamStart(self.call_id, rate, "pcm_s16le", 1, (role,), {}),
                                  protocol=self.protocol, send_results=False)
        elif rate != self.rate:
            raise ProtocolError("rate_changed", f"audio at {rate} Hz in a call that started at "
                                f"{self.rate} Hz", close_code=CLOSE_UNSUPPORTED)
        self.link.feed(decode_samples(payload, "pcm_s16le"))


class AudioSocketServer:
    """The TCP transport: limits, liveness and the end of the call, as the websocket
    transport does them, for :class:`AudioSocketCall`."""

    def __init__(self, monitor: Monitor, config: IngestConfig) -> None:
        self.monitor = monitor
        self.config = config
        self.port = config.audiosocket_port or 0
        self.server: asyncio.Server | None = None
        self.addresses = AddressLimit(config.max_connections_per_address)
        self._connections: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, self.config.host, self.port,
                                                 reuse_port=self.config.reuse_port or None)
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("AudioSocket listening on tcp://%s:%d", self.config.host, self.port)

    async def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    async def close(self, timeout_s: float = 2.0) -> None:
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=timeout_s)
        for task in list(self._connections):
            task.cancel()
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else "?"
        if self.addresses.full(address):
            writer.write(message(KIND_ERROR, b"too_many_connections"))
            writer.close()
            return
        self.addresses.acquire(address)
        self._connections.add(task)  # type: ignore[arg-type]

        async def send(data: str | bytes) -> None:
            writer.write(data if isinstance(data, bytes) else data.encode())
            await writer.drain()

        link = CallLink(self.monitor, new_guard(self.config), send)
        call = AudioSocketCall(link, self.config)
        watcher: asyncio.Task | None = None

        def on_start(session: CallSession) -> None:
            nonlocal watcher
            watcher = asyncio.create_task(self._hang_up_on_shutdown(session, writer))

        link.on_start = on_start
        try:
            reason, error = await self._serve(reader, call, link)
            session = link.session
            if session is not None and not session.ended:
                await self.monitor.close_call(session, reason)
                session.outbox.close()
            if error is not None:
                with contextlib.suppress(OSError):
                    writer.write(message(KIND_ERROR, error.code.encode()))
                    await writer.drain()
                    # A lingering close: stop sending, then read and discard what the peer
                    # still sends for a moment, so that closing with unread input (a TCP
                    # reset) cannot destroy the error message before the peer reads it.
                    writer.write_eof()
                    with contextlib.suppress(TimeoutError, ConnectionError):
                        await asyncio.wait_for(_discard(reader), 1.0)
        finally:
            link.release()
            if watcher is not None:
                watcher.cancel()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self.addresses.release(address)
            self._connections.discard(task)  # type: ignore[arg-type]

    async def _serve(self, reader: asyncio.StreamReader, call: AudioSocketCall, link: CallLink
                     ) -> tuple[str, ProtocolError | None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.start_timeout_s
        try:
            while True:
                if link.session is None:
                    timeout = max(deadline - loop.time(), 0.001)
                    what = ProtocolError("start_timeout", "the call did not start within "
                                         f"{self.config.start_timeout_s:g} s")
                else:
                    timeout = 2 * self.config.ping_interval_s
                    what = None
                try:
                    header = await asyncio.wait_for(reader.readexactly(3), timeout)
                    kind, length = HEADER.unpack(header)
                    payload = await asyncio.wait_for(reader.readexactly(length), timeout)
                except TimeoutError:
                    if what is not None:
                        raise what from None
                    log.info("dropping an AudioSocket peer silent for %.0f s", timeout)
                    return "disconnect", None
                link.guard.message()
                await call.receive(kind, payload)
        except CallEnd as end:
            return end.reason, None
        except asyncio.IncompleteReadError as exc:
            # A socket closed between messages is a hang-up; inside one, a broken message.
            if exc.partial:
                return "error", ProtocolError("partial_message", "the connection closed in "
                                              "the middle of a message")
            return ("stop" if link.session is not None else "disconnect"), None
        except ConnectionError:
            return "disconnect", None
        except ProtocolError as exc:
            return end_reason(exc), exc
        except Exception:  # whatever the protocol meets, the call ends cleanly
            log.exception("unexpected error in the AudioSocket handler")
            return "error", INTERNAL_ERROR

    async def _hang_up_on_shutdown(self, session: CallSession, writer: asyncio.StreamWriter
                                   ) -> None:
        """The server stopping ends the call (monitor.shutdown closes its outbox): hang up."""
        while await session.outbox.get() is not None:
            pass
        if session.end_reason == "shutdown":
            with contextlib.suppress(OSError):
                writer.write(message(KIND_HANGUP))
                await writer.drain()
            writer.close()


async def _discard(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass
