"""Window scores → smoothed frustration and distress → raised/cleared alerts.

Per call and role: exponential smoothing over speech windows, hysteresis (raise at
``≥ on`` for ``k`` consecutive speech windows, clear at ``≤ off``) and a cooldown between
a clear and the next raise of the same kind. Silent windows neither move the scores nor
break a run. Pure Python; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streamer.schema import Alert, new_id


@dataclass(frozen=True, slots=True)
class AlertRule:
    """Thresholds for one alert kind."""

    on: float
    off: float
    consecutive: int = 2
    cooldown_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.off < self.on <= 1.0:
            raise ValueError(f"need 0 <= off < on <= 1, got on={self.on} off={self.off}")
        if self.consecutive < 1:
            raise ValueError("consecutive must be at least 1")


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """Which roles raise alerts, the smoothing factor and each kind's rule.

    ``smoothing`` is the weight of the newest window in the exponential average
    (1.0 = no smoothing).
    """

    smoothing: float = 0.6
    alert_roles: tuple[str, ...] = ("customer",)
    frustration: AlertRule = AlertRule(on=0.55, off=0.3)
    distress: AlertRule = AlertRule(on=0.6, off=0.35)


def frustration_score(scores: dict[str, float]) -> float:
    return float(scores.get("angry", 0.0))


def distress_score(scores: dict[str, float]) -> float:
    return float(scores.get("fearful", 0.0) + scores.get("sad", 0.0))


KINDS = {"frustration": frustration_score, "distress": distress_score}


@dataclass(slots=True)
class _KindState:
    smoothed: float | None = None
    run: int = 0
    active_id: str | None = None
    cleared_at_s: float | None = None


@dataclass(slots=True)
class RoleAlerts:
    """Alert state of one role in one call."""

    call_id: str
    role: str
    config: AlertConfig
    kinds: dict[str, _KindState] = field(default_factory=dict)
    raised: int = 0

    def __post_init__(self) -> None:
        self.kinds = {kind: _KindState() for kind in KINDS}

    def reset(self) -> None:
        self.__post_init__()
        self.raised = 0

    def smoothed(self, kind: str) -> float | None:
        return self.kinds[kind].smoothed

    def update(self, *, scores: dict[str, float] | None, window_index: int,
               end_s: float) -> list[Alert]:
        """Feed one window's class probabilities (``None`` when silent)."""
        if scores is None:
            return []
        alerts = []
        alpha = self.config.smoothing
        may_alert = self.role in self.config.alert_roles
        for kind, score_of in KINDS.items():
            state = self.kinds[kind]
            rule: AlertRule = getattr(self.config, kind)
            score = score_of(scores)
            state.smoothed = score if state.smoothed is None else (
                alpha * score + (1 - alpha) * state.smoothed)
            if not may_alert:
                continue
            value = state.smoothed
            if state.active_id is None:
                state.run = state.run + 1 if value >= rule.on else 0
                cooling = (state.cleared_at_s is not None
                           and end_s - state.cleared_at_s < rule.cooldown_s)
                if state.run >= rule.consecutive and not cooling:
                    state.active_id = new_id()
                    state.run = 0
                    self.raised += 1
                    alerts.append(Alert(id=state.active_id, call_id=self.call_id, role=self.role,
                                        kind=kind, state="raised", score=round(value, 4),
                                        threshold=rule.on, window_index=window_index,
                                        call_time_s=end_s))
            elif value <= rule.off:
                alerts.append(Alert(id=new_id(), call_id=self.call_id, role=self.role, kind=kind,
                                    state="cleared", score=round(value, 4), threshold=rule.off,
                                    window_index=window_index, call_time_s=end_s,
                                    raised_id=state.active_id))
                state.active_id = None
                state.cleared_at_s = end_s
        return alerts

    def active(self) -> dict[str, str]:
        """kind → id of the alert currently raised."""
        return {k: s.active_id for k, s in self.kinds.items() if s.active_id is not None}
