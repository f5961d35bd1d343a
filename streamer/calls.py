"""Per-call state: one object per live call, holding its channels' windowers, its alert
state, its counters and the bounded queue of messages for its socket."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from streamer.aio import wait_event
from streamer.alerts import AlertConfig, RoleAlerts
from streamer.protocol import StreamStart
from streamer.schema import Alert, CallEvent, WindowResult, ended_message
from streamer.windowing import ChannelWindower, VadConfig, Window

#: A window's class probabilities by label; ``None`` for a silent (unscored) window.
Scores = dict[str, float] | None


@dataclass(frozen=True, slots=True)
class WindowingConfig:
    window_s: float = 3.0
    hop_s: float = 1.0
    vad: VadConfig = VadConfig()


class Outbox:
    """Bounded queue of messages for one socket: a slow reader loses its oldest results
    (counted) and never holds up ingest or other calls."""

    def __init__(self, maxlen: int) -> None:
        self.items: deque[str] = deque()
        self.maxlen = maxlen
        self.dropped = 0
        self.closed = False
        self._ready = asyncio.Event()

    def put(self, message: str) -> None:
        if self.closed:
            return
        if len(self.items) >= self.maxlen:
            self.items.popleft()
            self.dropped += 1
        self.items.append(message)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def get(self) -> str | None:
        """Next message, or None once closed and empty."""
        while not self.items:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self.items.popleft()


class ResultOrder:
    """Releases one channel's window results in window order.

    Speech windows wait for inference while silent ones are ready at once; releasing
    them as they come would let a silent window overtake earlier speech and carry a
    stale smoothed score. A dropped window (shed by the scheduler) releases nothing but
    no longer holds later windows back.
    """

    def __init__(self) -> None:
        self.next_index = 0
        self._ready: dict[int, tuple[Window, Scores, bool]] = {}

    def put(self, window: Window, scores: Scores, *, dropped: bool = False
            ) -> list[tuple[Window, Scores]]:
        """Record a finished window; return those now releasable, oldest first."""
        self._ready[window.index] = (window, scores, dropped)
        out: list[tuple[Window, Scores]] = []
        while self.next_index in self._ready:
            w, sc, gone = self._ready.pop(self.next_index)
            self.next_index += 1
            if not gone:
                out.append((w, sc))
        return out

    def flush(self) -> list[tuple[Window, Scores]]:
        """Release whatever is held, in order, skipping windows that never finished."""
        out = [(w, sc) for i, (w, sc, gone) in sorted(self._ready.items()) if not gone]
        if self._ready:
            self.next_index = max(self._ready) + 1
        self._ready.clear()
        return out


class CallSession:
    """A live call.

    Args:
        start: the validated start request.
        protocol: ``native`` or ``twilio``.
        send_results: whether results go back on the caller's socket.
    """

    def __init__(self, start: StreamStart, *, protocol: str, windowing: WindowingConfig,
                 alerts: AlertConfig, send_results: bool = True, outbox_max: int = 256) -> None:
        self.start = start
        self.call_id = start.call_id
        self.protocol = protocol
        self.windowing = windowing
        self.alert_config = alerts
        self.started_at = time.time()
        self.started_monotonic = time.monotonic()
        self.send_results = send_results
        self.outbox = Outbox(outbox_max)
        self.windowers = [
            ChannelWindower(call_id=start.call_id, role=role, channel=i,
                            input_rate_hz=start.sample_rate, window_s=windowing.window_s,
                            hop_s=windowing.hop_s, vad=windowing.vad)
            for i, role in enumerate(start.roles)
        ]
        self.alerts = {role: RoleAlerts(start.call_id, role, alerts) for role in start.roles}
        self.order = [ResultOrder() for _ in start.roles]
        self.windows = 0
        self.silent = 0
        self.scored = 0
        self.dropped = 0
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.ended = False
        self.end_reason: str | None = None
        self.start_event: CallEvent | None = None  # as published, re-announced after outages
        self.peaks: dict[str, dict[str, float]] = {}  # role → kind → highest published value

    def reset(self) -> None:
        for w in self.windowers:
            w.reset()
        for a in self.alerts.values():
            a.reset()
        self.order = [ResultOrder() for _ in self.start.roles]

    def decide(self, window: Window, scores: Scores, *, node: str = ""
               ) -> tuple[WindowResult, list[Alert]]:
        """One released window → its result message and the alerts it raises or clears.

        Must be called in window order per channel (see :class:`ResultOrder`); the
        monitor and ``callmon bench alerts`` both decide through here.
        """
        role_alerts = self.alerts[window.role]
        alerts = role_alerts.update(scores=scores, window_index=window.index, end_s=window.end_s)
        latency_ms = 1000 * (time.monotonic() - window.ready_at)
        frustration = role_alerts.value("frustration")
        distress = role_alerts.value("distress")
        for kind, value in (("frustration", frustration), ("distress", distress)):
            if value is None:
                continue
            peak = self.peaks.setdefault(window.role, {})
            if value > peak.get(kind, -1.0):
                peak[kind] = round(value, 4)
        result = WindowResult(
            call_id=self.call_id, role=window.role, channel=window.channel,
            window_index=window.index, start_s=window.start_s, end_s=window.end_s,
            speech=window.speech, speech_ratio=round(window.speech_ratio, 3), scores=scores,
            frustration=None if frustration is None else round(frustration, 4),
            distress=None if distress is None else round(distress, 4),
            latency_ms=round(latency_ms, 1), node=node,
        )
        return result, alerts

    def close_alerts(self) -> list[Alert]:
        """At the end of the call: a ``cleared`` (reason ``call_ended``) for every alert
        still active, so no consumer is left holding an alert that never ends."""
        out: list[Alert] = []
        for channel, role in enumerate(self.start.roles):
            windower = self.windowers[channel]
            out += self.alerts[role].close(window_index=max(windower.index - 1, 0),
                                           end_s=round(windower.duration_s, 3))
        return out

    def feed(self, frames: np.ndarray) -> list[Window]:
        """Interleaved ``(samples, channels)`` audio → completed windows."""
        out: list[Window] = []
        for channel, windower in enumerate(self.windowers):
            out.extend(windower.feed(np.ascontiguousarray(frames[:, channel])))
        return out

    def feed_channel(self, channel: int, samples: np.ndarray) -> list[Window]:
        return self.windowers[channel].feed(samples)

    def finish(self) -> list[Window]:
        """Flush the resamplers at the end of the call."""
        out: list[Window] = []
        for windower in self.windowers:
            out.extend(windower.feed(np.zeros(0, dtype=np.float32), last=True))
        return out

    def window_submitted(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def window_done(self) -> None:
        self.in_flight -= 1
        if self.in_flight <= 0:
            self.in_flight = 0
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        return await wait_event(self._idle, timeout_s)

    @property
    def duration_s(self) -> float:
        return max((w.duration_s for w in self.windowers), default=0.0)

    def ended_message(self) -> str:
        """What the caller's socket gets when the call is over."""
        return ended_message(self.call_id, reason=self.end_reason, duration_s=self.duration_s,
                             windows=self.windows, scored=self.scored, silent=self.silent,
                             dropped=self.dropped, alerts_raised=self.alerts_raised)

    @property
    def alerts_raised(self) -> int:
        return sum(a.raised for a in self.alerts.values())
