"""The monitor: the registry of live calls (admission, claims, start and end events), and
the middle of the path: a call's audio → its windows → the scheduler; scored windows go on
to :class:`streamer.results.ResultRouter` (order → decide → publish)."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import numpy as np

from streamer.alerts import AlertConfig
from streamer.calls import CallSession, WindowingConfig
from streamer.metrics import Histogram
from streamer.nodes import CallClaims
from streamer.protocol import CLOSE_POLICY, CLOSE_TRY_LATER, ProtocolError, StreamStart
from streamer.publisher import RedisPublisher
from streamer.results import ResultRouter, ResultStats
from streamer.scheduler import InferenceScheduler
from streamer.schema import CallEvent, new_id
from streamer.windowing import Window

log = logging.getLogger(__name__)


@dataclass(slots=True)
class MonitorStats:
    calls_started: int = 0
    calls_ended: int = 0
    windows: int = 0
    silent_windows: int = 0
    socket_messages_dropped: int = 0
    results: ResultStats = field(default_factory=ResultStats)  # alerts and latency

    @property
    def alerts_raised(self) -> int:
        return self.results.alerts_raised

    @property
    def alerts_cleared(self) -> int:
        return self.results.alerts_cleared

    @property
    def latency_ms(self) -> Histogram:
        return self.results.latency_ms


class Monitor:
    """Owns the live calls.

    Args:
        labels: the model's class names, in output order.
        scheduler: batches windows into the model.
        publisher: writes results, alerts and lifecycle events to Redis.
        max_calls: live calls allowed at once (more are refused with close code 1013).
    """

    def __init__(self, *, labels: tuple[str, ...], scheduler: InferenceScheduler,
                 publisher: RedisPublisher, windowing: WindowingConfig | None = None,
                 alerts: AlertConfig | None = None, max_calls: int = 500, node: str = "",
                 drain_timeout_s: float = 5.0, claims: CallClaims | None = None) -> None:
        self.labels = labels
        self.scheduler = scheduler
        self.publisher = publisher
        self.windowing = windowing or WindowingConfig()
        self.alert_config = alerts or AlertConfig()
        self.max_calls = max_calls
        self.node = node
        self.drain_timeout_s = drain_timeout_s
        self.calls: dict[str, CallSession] = {}
        self.claims = claims
        self.results = ResultRouter(publisher, node=node)
        self.stats = MonitorStats(results=self.results.stats)
        self.accepting = True

    # -- call lifecycle --------------------------------------------------------------------

    async def start_call(self, start: StreamStart, *, protocol: str, send_results: bool = True
                         ) -> CallSession:
        """Claim the call id cluster-wide, then register the call (see :meth:`open_call`)."""
        self._admit(start)
        if self.claims is not None:
            owner = await self.claims.claim(start.call_id)
            if owner is not None:
                raise ProtocolError("duplicate_call_id",
                                    f"call {start.call_id!r} is live on node {owner}",
                                    close_code=CLOSE_POLICY)
        try:
            return self.open_call(start, protocol=protocol, send_results=send_results)
        except ProtocolError:
            if self.claims is not None and start.call_id not in self.calls:
                await self.claims.release(start.call_id)
            raise

    def _admit(self, start: StreamStart) -> None:
        if not self.accepting:
            raise ProtocolError("shutting_down", "the server is shutting down",
                                close_code=CLOSE_TRY_LATER)
        if start.call_id in self.calls:
            raise ProtocolError("duplicate_call_id", f"call {start.call_id!r} is already live",
                                close_code=CLOSE_POLICY)
        if len(self.calls) >= self.max_calls:
            raise ProtocolError("at_capacity",
                                f"the server is at its maximum of {self.max_calls} live calls",
                                close_code=CLOSE_TRY_LATER)

    def open_call(self, start: StreamStart, *, protocol: str, send_results: bool = True
                  ) -> CallSession:
        """Register a call, or refuse it with the right close code."""
        self._admit(start)
        session = CallSession(start, protocol=protocol, windowing=self.windowing,
                              alerts=self.alert_config, send_results=send_results)
        self.calls[start.call_id] = session
        self.stats.calls_started += 1
        event = CallEvent(id=new_id(), type="call_started", call_id=start.call_id,
                          roles=start.roles, sample_rate=start.sample_rate,
                          encoding=start.encoding, protocol=protocol, metadata=start.metadata,
                          alert_thresholds={"frustration": self.alert_config.frustration.on,
                                            "distress": self.alert_config.distress.on},
                          ts=session.started_at, node=self.node)
        session.start_event = event
        self.publisher.publish_event(event)
        log.info("call %s started (%s, %d Hz %s, roles %s)", start.call_id, protocol,
                 start.sample_rate, start.encoding, ",".join(start.roles))
        return session

    async def close_call(self, session: CallSession, reason: str) -> CallEvent:
        """Flush the call's last audio, wait for its windows, clear its active alerts and
        publish ``call_ended``."""
        if session.ended:
            raise RuntimeError(f"call {session.call_id} already ended")
        session.ended = True
        session.end_reason = reason
        self.ingest(session, session.finish())
        if not await session.wait_idle(self.drain_timeout_s):
            log.warning("call %s ended with %d windows still in inference", session.call_id,
                        session.in_flight)
        self.results.flush(session)
        event = CallEvent(id=new_id(), type="call_ended", call_id=session.call_id,
                          roles=session.start.roles, sample_rate=session.start.sample_rate,
                          encoding=session.start.encoding, protocol=session.protocol,
                          metadata=session.start.metadata, reason=reason,
                          duration_s=round(session.duration_s, 3),
                          alerts_raised=session.alerts_raised, peaks=session.peaks or None,
                          node=self.node)
        self.publisher.publish_event(event)
        self.scheduler.forget(session.call_id, len(session.windowers))
        self.calls.pop(session.call_id, None)
        self.stats.calls_ended += 1
        self.stats.socket_messages_dropped += session.outbox.dropped
        log.info("call %s ended (%s): %.1f s, %d windows, %d dropped, %d alerts",
                 session.call_id, reason, session.duration_s, session.windows, session.dropped,
                 session.alerts_raised)
        if self.claims is not None:
            await self.claims.release(session.call_id)
        return event

    # -- audio → results -------------------------------------------------------------------

    def feed(self, session: CallSession, frames: np.ndarray) -> None:
        self.ingest(session, session.feed(frames))

    def feed_channel(self, session: CallSession, channel: int, samples: np.ndarray) -> None:
        self.ingest(session, session.feed_channel(channel, samples))

    def ingest(self, session: CallSession, windows: list[Window]) -> None:
        for window in windows:
            session.windows += 1
            self.stats.windows += 1
            if window.speech:
                session.window_submitted()
                self.scheduler.submit(window, functools.partial(self._on_scored, session))
            else:
                session.silent += 1
                self.stats.silent_windows += 1
                self.results.release(session, window, None)

    def _on_scored(self, session: CallSession, window: Window, probs: np.ndarray | None) -> None:
        session.window_done()
        if probs is None:
            session.dropped += 1
            self.results.release(session, window, None, dropped=True)
            return
        session.scored += 1
        scores = {label: round(float(p), 5) for label, p in zip(self.labels, probs, strict=True)}
        self.results.release(session, window, scores)

    # -- shutdown --------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Refuse new calls and end the live ones (reason ``shutdown``)."""
        self.accepting = False
        for session in list(self.calls.values()):
            if not session.ended:
                await self.close_call(session, "shutdown")
                if session.send_results:
                    session.outbox.put(session.ended_message())
                session.outbox.close()
