"""The last stage of the live path: a window's scores, released in window order, become its
result message and the alerts it raises or clears, sent to Redis (always) and to the call's
own socket (when its protocol takes them)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from streamer.calls import CallSession
from streamer.metrics import Histogram
from streamer.publisher import RedisPublisher
from streamer.schema import Alert, dumps
from streamer.windowing import Window

log = logging.getLogger(__name__)

Scores = dict[str, float] | None


@dataclass(slots=True)
class ResultStats:
    alerts_raised: int = 0
    alerts_cleared: int = 0
    latency_ms: Histogram = field(
        default_factory=lambda: Histogram((10, 25, 50, 100, 200, 300, 500, 1000, 2000, 5000)))


class ResultRouter:
    """Orders each call's windows, decides their alerts and sends everything on.

    Args:
        publisher: Redis pub/sub, the alert stream and call state.
        node: this streamer node's name, stamped on every result.
    """

    def __init__(self, publisher: RedisPublisher, *, node: str = "") -> None:
        self.publisher = publisher
        self.node = node
        self.stats = ResultStats()

    def release(self, session: CallSession, window: Window, scores: Scores, *,
                dropped: bool = False) -> None:
        """A finished window (scored, silent, or dropped by the scheduler): results leave in
        window order per channel (see :class:`streamer.calls.ResultOrder`)."""
        for w, sc in session.order[window.channel].put(window, scores, dropped=dropped):
            self.emit(session, w, sc)

    def flush(self, session: CallSession) -> None:
        """At the end of the call: what the order still holds, then a ``cleared`` for every
        alert still active."""
        for order in session.order:
            for window, scores in order.flush():
                self.emit(session, window, scores)
        for alert in session.close_alerts():
            self.alert(session, alert)

    def emit(self, session: CallSession, window: Window, scores: Scores) -> None:
        result, alerts = session.decide(window, scores, node=self.node)
        if scores is not None and result.latency_ms is not None:
            self.stats.latency_ms.observe(result.latency_ms)
        payload = dumps(result)
        self.publisher.publish_result(result, payload)
        if session.send_results:
            session.outbox.put(payload)
        for alert in alerts:
            self.alert(session, alert)

    def alert(self, session: CallSession, alert: Alert) -> None:
        if alert.state == "raised":
            self.stats.alerts_raised += 1
            log.info("alert %s raised: %s %s score %.2f at %.1f s", alert.id, alert.call_id,
                     alert.kind, alert.score, alert.call_time_s)
        else:
            self.stats.alerts_cleared += 1
        self.publisher.publish_event(alert)
        if session.send_results:
            session.outbox.put(dumps(alert))
