"""Window scores → smoothed frustration and distress → raised/cleared alerts.

Per call and role: exponential smoothing over speech windows and hysteresis: raise at
``≥ on`` for ``k`` consecutive speech windows; clear once the score has stayed ``≤ off``
for ``clear_hold_s`` (a rise back over ``on`` in that time keeps the alert active, so a
flapping score is one alert, not a burst). Nothing ever holds a raise back: a real onset
right after a false alert is alerted at once (or is already covered by the active one).
Silent windows neither move the scores nor break a run. Pure Python; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streamer.schema import Alert, new_id


@dataclass(frozen=True, slots=True)
class AlertRule:
    """Thresholds for one alert kind."""

    on: float
    off: float
    consecutive: int = 2
    clear_hold_s: float = 10.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.off < self.on <= 1.0:
            raise ValueError(f"need 0 <= off < on <= 1, got on={self.on} off={self.off}")
        if self.consecutive < 1:
            raise ValueError("consecutive must be at least 1")
        if self.clear_hold_s < 0:
            raise ValueError("clear_hold_s must not be negative")


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
    #: The caller's own voice as reference: ``none``; ``first`` (the mean score of the
    #: role's first ``baseline_windows`` speech windows with no alert of the kind active);
    #: ``running`` (that, then a slow average of later speech windows while no alert of the
    #: kind is active or building).
    baseline: str = "none"
    baseline_windows: int = 8
    baseline_rate: float = 0.02  # ``running``: weight of each new window in the reference

    def __post_init__(self) -> None:
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing}")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        if self.baseline_windows < 1:
            raise ValueError("baseline_windows must be at least 1")
        if not 0.0 < self.baseline_rate <= 1.0:
            raise ValueError(f"baseline_rate must be in (0, 1], got {self.baseline_rate}")


BASELINES = ("none", "first", "running")


def alert_config_from(card_alerts: dict | None = None, **overrides) -> AlertConfig:
    """Alert rules from a model card's ``alerts`` block, with explicit overrides on top.

    Args:
        card_alerts: ``{"smoothing": .., "frustration": {"on", "off", "consecutive",
            "clear_hold_s"}, "distress": {..}}``; missing keys keep the defaults.
        overrides: ``smoothing``, ``alert_roles``, ``consecutive``, ``clear_hold_s``, and
            ``<kind>_on``/``<kind>_off``; ``None`` values are ignored.
    """
    card_alerts = card_alerts or {}
    given = {k: v for k, v in overrides.items() if v is not None}
    base = AlertConfig()
    rules = {}
    for kind in KINDS:
        default: AlertRule = getattr(base, kind)
        fields: dict[str, Any] = {"on": default.on, "off": default.off,
                                  "consecutive": default.consecutive,
                  "clear_hold_s": default.clear_hold_s}
        fields.update({k: v for k, v in (card_alerts.get(kind) or {}).items() if k in fields})
        for name in ("consecutive", "clear_hold_s"):
            if name in given:
                fields[name] = given[name]
        for name in ("on", "off"):
            if f"{kind}_{name}" in given:
                fields[name] = given[f"{kind}_{name}"]
        try:
            rules[kind] = AlertRule(**fields)
        except ValueError as exc:
            raise ValueError(f"{kind}: {exc}") from None
    return AlertConfig(
        smoothing=given.get("smoothing", card_alerts.get("smoothing", base.smoothing)),
        alert_roles=given.get("alert_roles", base.alert_roles),
        baseline=given.get("baseline", card_alerts.get("baseline", base.baseline)),
        baseline_windows=card_alerts.get("baseline_windows", base.baseline_windows),
        baseline_rate=card_alerts.get("baseline_rate", base.baseline_rate),
        frustration=rules["frustration"],
        distress=rules["distress"],
    )


def alert_config_dict(config: AlertConfig) -> dict:
    """The card's ``alerts`` block for ``config`` (what :func:`alert_config_from` reads)."""
    out: dict = {"smoothing": config.smoothing, "baseline": config.baseline}
    if config.baseline != "none":
        out.update(baseline_windows=config.baseline_windows, baseline_rate=config.baseline_rate)
    for kind in KINDS:
        rule: AlertRule = getattr(config, kind)
        out[kind] = {"on": rule.on, "off": rule.off, "consecutive": rule.consecutive,
                     "clear_hold_s": rule.clear_hold_s}
    return out


def frustration_score(scores: dict[str, float]) -> float:
    return float(scores.get("angry", 0.0))


def distress_score(scores: dict[str, float]) -> float:
    return float(scores.get("fearful", 0.0) + scores.get("sad", 0.0))


KINDS = {"frustration": frustration_score, "distress": distress_score}


@dataclass(slots=True)
class _KindState:
    smoothed: float | None = None
    value: float | None = None  # what the thresholds see: smoothed, relative to the baseline
    reference: float | None = None  # the caller's baseline score, once established
    reference_sum: float = 0.0
    reference_n: int = 0
    run: int = 0
    active_id: str | None = None
    below_since_s: float | None = None  # while active: when the score fell to ``off``


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

    def value(self, kind: str) -> float | None:
        """The score the thresholds compare: smoothed, and relative to the caller's
        reference when the config has a baseline."""
        return self.kinds[kind].value

    def _relative(self, state: _KindState, score: float) -> float:
        """Smoothed score → decision value, learning the caller's reference on the way.

        With a reference ``b``, the value is the share of the headroom above it that the
        score takes, ``(s - b) / (1 - b)`` (0 at the caller's usual level, 1 at certainty).
        Until the reference is established, the absolute smoothed score decides.
        """
        cfg = self.config
        smoothed = state.smoothed if state.smoothed is not None else score
        if cfg.baseline == "none":
            return smoothed
        if state.reference is None:
            # Speech under an active alert of the kind is not the caller's usual voice: a
            # caller upset from the first word keeps the alert instead of becoming the
            # reference that clears it.
            if state.active_id is None:
                state.reference_sum += score
                state.reference_n += 1
                if state.reference_n >= cfg.baseline_windows:
                    state.reference = state.reference_sum / state.reference_n
            return smoothed
        if cfg.baseline == "running" and state.active_id is None and state.run == 0:
            state.reference += cfg.baseline_rate * (score - state.reference)
        b = min(state.reference, 0.95)
        return max(0.0, (smoothed - b) / (1.0 - b))

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
            value = state.value = self._relative(state, score)
            if not may_alert:
                continue
            if state.active_id is None:
                state.run = state.run + 1 if value >= rule.on else 0
                if state.run >= rule.consecutive:
                    state.active_id = new_id()
                    state.run = 0
                    state.below_since_s = None
                    self.raised += 1
                    alerts.append(Alert(id=state.active_id, call_id=self.call_id, role=self.role,
                                        kind=kind, state="raised", score=round(value, 4),
                                        threshold=rule.on, window_index=window_index,
                                        call_time_s=end_s))
            elif value > rule.off:
                state.below_since_s = None
            else:
                if state.below_since_s is None:
                    state.below_since_s = end_s
                if end_s - state.below_since_s >= rule.clear_hold_s:
                    alerts.append(self._clear(kind, score=value, threshold=rule.off,
                                              window_index=window_index, end_s=end_s))
        return alerts

    def _clear(self, kind: str, *, score: float, threshold: float, window_index: int,
               end_s: float, reason: str = "score") -> Alert:
        state = self.kinds[kind]
        alert = Alert(id=new_id(), call_id=self.call_id, role=self.role, kind=kind,
                      state="cleared", score=round(score, 4), threshold=threshold,
                      window_index=window_index, call_time_s=end_s, raised_id=state.active_id,
                      reason=reason)
        state.active_id = None
        state.below_since_s = None
        state.run = 0
        return alert

    def close(self, *, window_index: int, end_s: float) -> list[Alert]:
        """The call ended: clear every alert still active (``reason="call_ended"``)."""
        out = []
        for kind, state in self.kinds.items():
            if state.active_id is not None:
                rule: AlertRule = getattr(self.config, kind)
                out.append(self._clear(kind, score=state.value or 0.0, threshold=rule.off,
                                       window_index=window_index, end_s=end_s,
                                       reason="call_ended"))
        return out

    def active(self) -> dict[str, str]:
        """kind → id of the alert currently raised."""
        return {k: s.active_id for k, s in self.kinds.items() if s.active_id is not None}
