"""The contract between a transport and a protocol adapter.

A transport (the websocket server, the AudioSocket TCP server) owns the connection: the
handshake, authentication, limits, liveness and the end of the call. An adapter owns one
platform's messages: it turns them into a call's start, its audio and its roles, and
answers in the platform's own words. The two meet in :class:`CallLink`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from streamer.calls import CallSession
from streamer.limits import AudioPacer, TokenBucket
from streamer.protocol import CLOSE_INTERNAL, ProtocolError, StreamStart
from streamer.schema import error_message

if TYPE_CHECKING:
    from streamer.monitor import Monitor


class CallEnd(Exception):  # noqa: N818  (a signal, not an error)
    """Raised by an adapter when the peer ended the call cleanly (``reason``: ``stop``)."""

    def __init__(self, reason: str = "stop") -> None:
        super().__init__(reason)
        self.reason = reason


class Guard:
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


def new_guard(config) -> Guard:
    """The limits of one connection, from an :class:`~streamer.ingest.config.IngestConfig`."""
    return Guard(TokenBucket(config.max_messages_per_s, config.message_burst),
                 AudioPacer(config.max_speed, config.speed_burst_s), config.max_call_s)


#: Codes of refusals that are a limit, not a malformed message (``call_ended`` reason ``limit``).
LIMIT_CODES = frozenset({"rate_limited", "max_duration", "too_fast"})

#: What a peer is told when the server itself failed on its message.
INTERNAL_ERROR = ProtocolError("internal_error", "the server could not process a message; the "
                               "call was ended", close_code=CLOSE_INTERNAL)


def end_reason(error: ProtocolError) -> str:
    """``call_ended`` reason of a call a refusal ended."""
    return "limit" if error.code in LIMIT_CODES else "error"


class CallLink:
    """What an adapter may do with its connection's call.

    Every audio sample passes through here, so the pace and length limits hold for every
    protocol alike, gap fill included.
    """

    def __init__(self, monitor: Monitor, guard: Guard,
                 send: Callable[[str | bytes], Awaitable[None]]) -> None:
        self.monitor = monitor
        self.guard = guard
        self.send_now = send
        self.session: CallSession | None = None
        self.on_start: Callable[[CallSession], None] | None = None

    @property
    def started(self) -> bool:
        return self.session is not None

    def release(self) -> None:
        """The connection is done: let go of its call. The adapter holds this link and the
        connection's ``on_start`` holds the adapter, so without this an ended call's audio
        buffers waited for the cyclic garbage collector (about 1.5 MB per call, tens of MB
        under churn)."""
        self.session = None
        self.on_start = None

    async def start(self, start: StreamStart, *, protocol: str, send_results: bool
                    ) -> CallSession:
        """Register the call (refusals raise :class:`ProtocolError`)."""
        self.session = await self.monitor.start_call(start, protocol=protocol,
                                                     send_results=send_results)
        if self.on_start is not None:
            self.on_start(self.session)
        return self.session

    def feed(self, frames: np.ndarray) -> None:
        """Interleaved ``(samples, channels)`` audio at the call's rate."""
        session = self._session()
        self.monitor.feed(session, frames)
        self.guard.audio(len(frames) / session.start.sample_rate)

    def feed_channel(self, channel: int, samples: np.ndarray) -> None:
        """One channel's samples (platforms that send each track on its own)."""
        session = self._session()
        self.monitor.feed_channel(session, channel, samples)
        self.guard.audio(len(samples) / session.start.sample_rate / session.start.channels)

    def fill_gap(self, seconds: float, max_gap_s: float, channel: int | None = None) -> None:
        """Audio the platform never sent (lost, discarded, paused), as silence up to
        ``max_gap_s``, so call time stays close to the platform's clock."""
        session = self._session()
        n = int(round(min(seconds, max_gap_s) * session.start.sample_rate))
        if n <= 0:
            return
        if channel is None:
            self.feed(np.zeros((n, session.start.channels), dtype=np.float32))
        else:
            self.feed_channel(channel, np.zeros(n, dtype=np.float32))

    async def reply(self, message: str | bytes) -> None:
        """A protocol message to the peer: in order with the call's results once the call
        is live, at once before."""
        if self.session is not None and isinstance(message, str):
            self.session.outbox.put(message)
        else:
            await self.send_now(message)

    def _session(self) -> CallSession:
        if self.session is None:
            raise ProtocolError("audio_before_start", "audio before the call started")
        return self.session


class Adapter:
    """One platform's protocol on a websocket path.

    Subclasses set :attr:`protocol` (the name in ``call_started``), :attr:`path` and,
    where the platform asks for one, :attr:`subprotocols`; they implement :meth:`receive`
    and may override the hooks that word the start, the end and refusals.
    """

    protocol: ClassVar[str]
    path: ClassVar[str]
    subprotocols: ClassVar[tuple[str, ...]] = ()

    def __init__(self, link: CallLink, *, query: dict[str, list[str]],
                 headers: dict[str, str], config) -> None:
        self.link = link
        self.query = query
        self.headers = headers
        self.config = config

    @classmethod
    def check_handshake(cls, headers: dict[str, str], query: dict[str, list[str]], config, *,
                        target: str) -> tuple[int, str, str] | None:
        """Refuse the HTTP upgrade: ``(status, error code, message)``, or None to accept.
        The ingest token has been checked already (see :meth:`credential`); ``target`` is the
        request's path and query."""
        return None

    @classmethod
    def credential(cls, headers: dict[str, str], query: dict[str, list[str]]) -> str:
        """Where this platform carries the ingest token: ``Authorization: Bearer`` or
        ``?token=`` by default."""
        header = headers.get("authorization", "")
        supplied = header[7:] if header.lower().startswith("bearer ") else ""
        return supplied or (query.get("token") or [""])[0]

    async def receive(self, message: str | bytes) -> None:
        """Handle one message. Raise :class:`CallEnd` when the peer ends the call,
        :class:`ProtocolError` to refuse it."""
        raise NotImplementedError

    def closed_by_peer(self, code: int | None) -> str:
        """``call_ended`` reason when the peer closed the socket without a stop message."""
        return "disconnect"

    def ended(self, session: CallSession, reason: str) -> list[str]:
        """Messages for the peer once the call is over (before the socket closes)."""
        return [session.ended_message()] if session.send_results else []

    def refusal(self, error: ProtocolError) -> list[str]:
        """The protocol's own words for a refusal."""
        return [error_message(error.code, str(error))]

    def shutting_down(self) -> list[str]:
        """Messages for the peer when the server stops while the call is live."""
        return []

    async def linger(self, receive: Callable[[], Awaitable[str | bytes]]) -> None:
        """After a refusal, before the server closes: a protocol whose peer must answer
        (AudioHook's ``close`` after ``disconnect``) waits for it here."""
