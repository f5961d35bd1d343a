"""The wire schema: every message callmon sends over Redis or a native websocket, and
every Redis key and channel it uses.

This module is the single definition; ``docs/schema.md`` describes it and the dashboard
imports it. Every message is a JSON object with ``"v": 1`` and a ``"type"``. (The
platforms' own messages — AudioHook, Twilio, mod_audio_fork — are their adapters' business,
in ``streamer/ingest``.)
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

SCHEMA_VERSION = 1

# Redis names. A call's keys and channel carry its id as a hash tag, ``{call_id}``, so they
# share one Redis Cluster slot (call ids cannot contain braces).
ALERTS_CHANNEL = "callmon:alerts"
ALERTS_STREAM = "callmon:alerts:log"
LIVE_CALLS_KEY = "callmon:calls:live"  # sorted set: call_id → start time (unix s)
ACKS_KEY = "callmon:alerts:acks"  # hash: alert id → {"by", "at"}
ACKS_CHANNEL = "callmon:acks"  # pub/sub: acknowledgements as they happen


def node_key(node: str) -> str:
    """A streamer node's heartbeat (expires unless renewed)."""
    return f"callmon:node:{node}"


def reaped_key(call_id: str) -> str:
    """Set once by the node that ends a dead node's call as ``lost``."""
    return f"callmon:call:{{{call_id}}}:reaped"


def call_channel(call_id: str) -> str:
    """Pub/sub channel with every window result of one call."""
    return f"callmon:call:{{{call_id}}}"


def call_state_key(call_id: str) -> str:
    """JSON of the call's latest state (start message, last result per role, alerts)."""
    return f"callmon:call:{{{call_id}}}:state"


def call_owner_key(call_id: str) -> str:
    """The node that holds the live call (``SET NX``, expiring unless its heartbeat renews
    it): a call id is live on one node of the cluster at a time."""
    return f"callmon:call:{{{call_id}}}:owner"


def call_timeline_key(call_id: str) -> str:
    """List of the call's window results, oldest first, capped."""
    return f"callmon:call:{{{call_id}}}:timeline"


def call_alerts_key(call_id: str) -> str:
    """List of the call's alert messages (raised and cleared), oldest first, capped: what
    the call page shades, read without scanning the whole alert log."""
    return f"callmon:call:{{{call_id}}}:alerts"


Role = Literal["customer", "agent"]
AlertKind = Literal["frustration", "distress"]
AlertState = Literal["raised", "cleared"]
EndReason = Literal["stop", "disconnect", "error", "limit", "shutdown", "lost"]


def new_id(at: float | None = None) -> str:
    """Time-ordered unique id (UUIDv7 layout) for alerts and lifecycle events, made now or
    ``at`` (a Unix time)."""
    ms = int((time.time() if at is None else at) * 1000)
    rand = uuid.uuid4().int & ((1 << 74) - 1)
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def id_time(event_id: str) -> float | None:
    """The Unix time an id of :func:`new_id` was made, or ``None`` for a string that is not
    such an id."""
    try:
        value = uuid.UUID(event_id)
    except ValueError:
        return None
    if value.version != 7 or str(value) != event_id.lower():
        return None
    return (value.int >> 80) / 1000


@dataclass(frozen=True, slots=True)
class WindowResult:
    """One scored (or silent) window of one channel of one call."""

    call_id: str
    role: str
    channel: int
    window_index: int
    start_s: float
    end_s: float
    speech: bool
    speech_ratio: float
    scores: dict[str, float] | None  # None when the window was silent and not scored
    frustration: float | None  # smoothed, see streamer.alerts
    distress: float | None
    latency_ms: float | None = None  # end of the window's audio → result ready
    ts: float = field(default_factory=time.time)
    node: str = ""
    v: int = SCHEMA_VERSION
    type: str = "window"

    @property
    def emotion(self) -> str | None:
        if not self.scores:
            return None
        return max(self.scores, key=self.scores.__getitem__)

    def to_wire(self) -> dict[str, Any]:
        # A shallow copy (asdict deep-copies the scores): one result per window of every
        # call, so this is on the hot path; nothing mutates what it returns.
        data = {name: getattr(self, name) for name in _WINDOW_FIELDS}
        emotion = self.emotion
        data["emotion"] = emotion
        data["confidence"] = self.scores[emotion] if self.scores and emotion else None
        return data


_WINDOW_FIELDS = tuple(f.name for f in fields(WindowResult))


@dataclass(frozen=True, slots=True)
class Alert:
    """A frustration or distress alert being raised or cleared for one call and role."""

    id: str
    call_id: str
    role: str
    kind: str  # AlertKind
    state: str  # AlertState
    score: float
    threshold: float
    window_index: int
    call_time_s: float  # position in the call (end of the deciding window)
    raised_id: str | None = None  # on "cleared": the id of the alert it clears
    reason: str | None = None  # on "cleared": "score" (fell below off) or "call_ended"
    ts: float = field(default_factory=time.time)
    node: str = ""
    v: int = SCHEMA_VERSION
    type: str = "alert"

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class CallEvent:
    """``call_started`` or ``call_ended``."""

    id: str
    type: str  # "call_started" | "call_ended"
    call_id: str
    roles: tuple[str, ...]
    sample_rate: int
    encoding: str
    protocol: str  # "native", "twilio", "audiohook", "audiofork" or "audiosocket"
    metadata: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None  # on call_ended, see EndReason
    duration_s: float | None = None
    alerts_raised: int | None = None
    # On call_started: each alert kind's "on" threshold, on the scale of the published
    # frustration/distress values (the dashboard draws them).
    alert_thresholds: dict[str, float] | None = None
    # On call_ended: each role's highest frustration and distress of the call (the
    # published, smoothed values), e.g. {"customer": {"frustration": 0.81, "distress": 0.2}}.
    peaks: dict[str, dict[str, float]] | None = None
    ts: float = field(default_factory=time.time)
    node: str = ""
    v: int = SCHEMA_VERSION

    def to_wire(self) -> dict[str, Any]:
        data = asdict(self)
        data["roles"] = list(self.roles)
        return data


def dumps(message: WindowResult | Alert | CallEvent | dict[str, Any]) -> str:
    data = message if isinstance(message, dict) else message.to_wire()
    return json.dumps(data, separators=(",", ":"), allow_nan=False)


def error_message(code: str, message: str, **extra: Any) -> str:
    """What the server sends before closing a socket it refuses."""
    return json.dumps({"v": SCHEMA_VERSION, "type": "error", "code": code, "message": message,
                       **extra})


def started_message(call_id: str, *, labels: list[str], window_s: float, hop_s: float,
                    max_speed: float, speed_burst_s: float) -> str:
    """The native socket's answer to ``start``: the model's labels, the windowing, and the
    pace the server accepts (a client may send this fast: ``callmon stream --fast``)."""
    return json.dumps({"v": SCHEMA_VERSION, "type": "started", "call_id": call_id,
                       "labels": labels, "window_s": window_s, "hop_s": hop_s,
                       "max_speed": max_speed, "speed_burst_s": speed_burst_s})


def ended_message(call_id: str, *, reason: str | None, duration_s: float, windows: int,
                  scored: int, silent: int, dropped: int, alerts_raised: int) -> str:
    """The native socket's last message of a call."""
    return json.dumps({"v": SCHEMA_VERSION, "type": "ended", "call_id": call_id,
                       "reason": reason, "duration_s": round(duration_s, 3),
                       "windows": windows, "scored": scored, "silent": silent,
                       "dropped": dropped, "alerts_raised": alerts_raised})
