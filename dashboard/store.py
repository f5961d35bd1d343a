"""Reading the streamer's state from Redis, and recording acknowledgements."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from streamer import schema
from streamer.alerts_feed import stream_id_for
from streamer.redis_client import is_cluster, publish

log = logging.getLogger(__name__)

#: Stored messages a reader could not decode (or could not re-encode as UTF-8 JSON): skipped.
undecodable = 0
_warned = False
T = TypeVar("T")

#: The one thread that decodes and encodes large answers off the event loop (see
#: :func:`off_loop`).
_DECODER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dashboard-decode")


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in the dashboard's decoding thread. Decoding a large answer in the event
    loop, which under ``callmon serve`` also carries every call's audio, stopped it for as
    long; in a thread the loop still gets its turns (the two share the interpreter lock).
    One thread, not one per request: with eight browsers reloading a grid of 100 calls at
    once, in asyncio's pool of threads, health checks waited 610 ms (99th percentile); in
    line on one thread, 180 ms, each browser's answer 1.07x as slow
    (``docs/results/bench_call_detail_storm.json``)."""
    return await asyncio.get_running_loop().run_in_executor(_DECODER, fn, *args)


def _decode(value: bytes | str | None) -> Any:
    """A stored JSON message, or ``None`` if absent or unreadable. One bad message (a lone
    surrogate, a truncated write, a NaN) must never make a whole listing fail: it is skipped,
    counted and logged once.

    Strict UTF-8 refuses encoded surrogates and the parse refuses NaN and infinities, so only
    a message with a ``\\uD800``-style escape can still hold a lone surrogate: just those are
    re-encoded to check (re-encoding every message was half the cost of listing calls)."""
    if value is None:
        return None
    try:
        raw = value.encode() if isinstance(value, str) else value
        data = json.loads(raw.decode("utf-8"), parse_constant=_not_finite,
                          parse_float=_finite_float)
        if _SURROGATE_ESCAPE.search(raw):
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        return data
    except (ValueError, UnicodeError, RecursionError) as exc:
        _skip(f"cannot be decoded ({exc})")
        return None


def _skip(why: str) -> None:
    """Count a stored message that cannot be served; the first is logged."""
    global undecodable, _warned
    undecodable += 1
    if not _warned:
        _warned = True
        log.warning("skipping a stored message that %s; further ones are counted, not logged",
                    why)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _strings(message: dict, *names: str) -> bool:
    return all(isinstance(message.get(name), str) for name in names)


def _call_event_ok(e: Any) -> bool:
    """What the dashboard and its page read of a call event (``call_started``/``ended``)."""
    return (isinstance(e, dict) and _strings(e, "id", "call_id", "type") and _number(e.get("ts"))
            and isinstance(e.get("roles"), list) and all(isinstance(r, str) for r in e["roles"])
            and isinstance(e.get("metadata") or {}, dict)
            and (e.get("duration_s") is None or _number(e["duration_s"]))
            and (e.get("alerts_raised") is None or _number(e["alerts_raised"]))
            and isinstance(peaks := e.get("peaks") or {}, dict)
            and all(isinstance(p, dict) for p in peaks.values()))


def _alert_ok(a: Any) -> bool:
    """What the dashboard and its page read of an alert."""
    return (isinstance(a, dict) and _strings(a, "id", "call_id", "role", "kind", "state")
            and all(_number(a.get(name)) for name in ("score", "call_time_s", "ts")))


def _ack_ok(ack: Any) -> bool:
    """What the page reads of an acknowledgement."""
    return isinstance(ack, dict) and _strings(ack, "by") and _number(ack.get("at")) and (
        ack.get("note") is None or isinstance(ack["note"], str))


def _window_ok(w: Any) -> bool:
    """What the grid reads of a call's latest window result."""
    return isinstance(w, dict) and all(w.get(name) is None or _number(w[name])
                                       for name in ("frustration", "distress"))


def _served(message: Any, ok: Callable[[Any], bool]) -> Any:
    """``message`` (decoded) if it holds what its readers read (``ok``), else ``None``,
    skipped as an undecodable one is: a stored call start without its time made the grid
    answer 500, a blind dashboard, until the call's state expired."""
    if message is None or ok(message):
        return message
    _skip("lacks fields the dashboard reads")
    return None


def _read(value: bytes | str | None, ok: Callable[[Any], bool]) -> Any:
    """A stored message decoded (:func:`_decode`) and served if it holds what ``ok`` asks
    (:func:`_served`); ``None`` otherwise."""
    return _served(_decode(value), ok)


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _not_finite(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} overflows a float")
    return number


def risk(call: dict) -> float:
    """How much a call needs attention: an active alert first, then the customer's scores."""
    active = any(a.get("state") == "raised" and not a.get("ack") for a in call["alerts"].values())
    last = call.get("last", {}).get("customer") or {}
    score = max(last.get("frustration") or 0.0, last.get("distress") or 0.0)
    return (2.0 if active else 0.0) + score


async def call_summary(redis, call_id: str) -> dict | None:
    """One call's state: how it started, its latest results, its alerts (with
    acknowledgements) and its end; ``None`` for an unknown call."""
    return (await call_summaries(redis, [call_id]))[0]


#: Stored rows (window results, call states) read in one pipeline at most: the event loop
#: parses each pipeline's reply whole before its next turn (the grid of 100 calls read its
#: 36 000 window results in one pipeline, and held the loop for all of them).
PIPELINE_ROWS = 4000


async def call_summaries(redis, call_ids: list[str], *, history: int | None = None
                         ) -> list[dict | None]:
    """:func:`call_summary` of each call, read in a few round trips whatever their number
    (pipelines of state hashes, of up to ``PIPELINE_ROWS`` rows each, and one read of the
    acknowledgements), not two per call: a grid of 2 000 live calls took over a second to
    list one call at a time. With ``history``, each call also gets ``history`` and
    ``call_time_s`` (:func:`sparkline`) from its last ``2 * history`` window results, read
    in the same pipelines (both roles share the timeline: twice the points read covers the
    customer's).

    What is read is decoded off the event loop (:func:`off_loop`): for the grid of 100
    calls (36 000 window results) that held the event loop, which also serves ingest under
    ``callmon serve``, ~230 ms whenever a browser connected."""
    tail = 2 * history if history else 0
    replies: list = []
    step = max(1, PIPELINE_ROWS // (tail + 1))
    for first in range(0, len(call_ids), step):
        pipe = redis.pipeline(transaction=False)
        for call_id in call_ids[first:first + step]:
            pipe.hgetall(schema.call_state_key(call_id))
            if tail:
                pipe.lrange(schema.call_timeline_key(call_id), -tail, -1)
        replies += await pipe.execute()
    calls = await off_loop(_summaries, call_ids, replies, history)
    await _attach_acks(redis, [a for c in calls if c is not None for a in c["alerts"].values()])
    return calls


def _summaries(call_ids: list[str], replies: list, history: int | None) -> list[dict | None]:
    """The calls' summaries from the pipeline's replies (each call's state, then its
    timeline's tail with ``history``)."""
    step = 2 if history else 1
    calls = [_summary(call_id, state) for call_id, state in
             zip(call_ids, replies[::step], strict=True)]
    if history:
        for call, rows in zip(calls, replies[1::2], strict=True):
            if call is not None:
                call["history"], call["call_time_s"] = sparkline(rows, history)
    return calls


async def _attach_acks(redis, alerts: list[dict]) -> None:
    """Give each alert its acknowledgement (``None`` if none), in one read."""
    if alerts:
        acks = await redis.hmget(schema.ACKS_KEY, [a["id"] for a in alerts])
        decoded: list[Any] = await off_loop(_decode_acks, acks)
        for alert, ack in zip(alerts, decoded, strict=True):
            alert["ack"] = ack


def _decode_acks(acks: list[bytes | None]) -> list[dict | None]:
    return [_read(ack, _ack_ok) for ack in acks]


def _summary(call_id: str, state: dict) -> dict | None:
    fields = {k.decode(): v for k, v in state.items()}
    start = _read(fields.get("start"), _call_event_ok)
    end = _read(fields.get("end"), _call_event_ok)
    if start is None or (end is None and fields.get("end") is not None):
        return None  # (an end that cannot be read: not listed as live either)
    alerts = {k.split(":", 1)[1]: a for k, v in fields.items()
              if k.startswith("alert:") and (a := _read(v, _alert_ok)) is not None}
    return {
        "call_id": call_id,
        "start": start,
        "end": end,
        "live": end is None,
        "duration_s": end["duration_s"] if end else round(time.time() - start["ts"], 1),
        "agent": (start.get("metadata") or {}).get("agent"),
        "node": start.get("node"),
        "last": {k.split(":", 1)[1]: last for k, v in fields.items()
                 if k.startswith("last:") and (last := _read(v, _window_ok))
                 is not None},
        "alerts": alerts,
    }


async def live_calls(redis, *, history: int | None = None) -> list[dict]:
    """The live calls, most at-risk first. A call that ends between reading the live set
    and reading its state has its end stored by then: it is left out, not listed ended.

    With ``history``, each call also gets what the grid draws, compactly: ``history``, the
    customer's last ``history`` scored windows as ``[end_s, frustration, distress]``, and
    ``call_time_s``, the audio received so far (whole window results came to ~340 bytes
    each, 12 MB for 100 calls' sparklines)."""
    ids = [c.decode() for c in await redis.zrange(schema.LIVE_CALLS_KEY, 0, -1)]
    calls = [c for c in await call_summaries(redis, ids, history=history)
             if c is not None and c["live"]]
    for c in calls:
        c["risk"] = round(risk(c), 4)
    return sorted(calls, key=lambda c: -c["risk"])


def sparkline(rows: list[bytes], points: int) -> tuple[list[list[float | None]], float]:
    """The customer's last ``points`` scored windows as ``[end_s, frustration, distress]``,
    and the latest window end of any role (the call time on the audio's clock), from stored
    window results (:func:`_spark_point`), newest first: the rows older than the points
    needed (half of those fetched, on a call without an agent channel) are not parsed."""
    scored: list[list[float | None]] = []
    latest = 0.0
    for point in map(_spark_point, reversed(rows)):
        if point is None:
            continue
        role, end, f, d = point
        latest = max(latest, end)
        if role == "customer" and f is not None:
            scored.append([end, f, d])
            if len(scored) == points:
                break
    return scored[::-1], latest


#: What a sparkline needs of a window result, as ``schema.dumps`` writes one (compact, its
#: fields in order): the role, the window's end, the smoothed frustration and distress. Each
#: field between them is spelled out (the scores hold numbers only), which matches faster
#: than a lazy ``.*?`` over them did.
_SPARK_ROW = re.compile(
    rb'\{"call_id":"(?:[^"\\]|\\.)*","role":"(customer|agent)","channel":-?\d+,'
    rb'"window_index":-?\d+,"start_s":[^,]*,"end_s":([^,]*),"speech":(?:true|false),'
    rb'"speech_ratio":[^,]*,"scores":(?:null|\{[^{}]*\}),'
    rb'"frustration":([^,]*),"distress":([^,]*),')


def _spark_point(row: bytes) -> tuple[str, float, float | None, float | None] | None:
    """(role, end_s, frustration, distress) of one stored window result, or ``None``. A
    listing of live calls reads hundreds of them per call: decoding each whole
    (:func:`_decode`) cost most of a second per 100 calls. The fields are matched instead;
    a row not written as ``schema.dumps`` writes one is decoded as any other."""
    m = _SPARK_ROW.match(row) if row.endswith(b"}") else None  # not a truncated write
    if m is not None:
        role, end_text, f_text, d_text = m.groups()
        try:
            end_s = float(end_text)
            frustration = None if f_text == b"null" else float(f_text)
            distress = None if d_text == b"null" else float(d_text)
        except ValueError:
            pass
        else:
            finite = math.isfinite
            if finite(end_s) and (frustration is None or finite(frustration)) and (
                    distress is None or finite(distress)):
                return role.decode(), end_s, frustration, distress
    w = _decode(row)
    if not isinstance(w, dict) or not isinstance(end := w.get("end_s"), int | float) \
            or isinstance(end, bool):
        return None
    f, d = w.get("frustration"), w.get("distress")
    numbers = all(v is None or (isinstance(v, int | float) and not isinstance(v, bool))
                  for v in (f, d))
    return (str(w.get("role")), float(end), f, d) if numbers else None


async def timeline_json(redis, call_id: str, *, tail: int | None = None) -> bytes:
    """The call's window results (its last ``tail`` only, if given), oldest first, as the
    JSON array the API serves: the stored rows as they are, those :func:`_decode` cannot
    read left out. Checking 7 200 rows (a two-hour call) is ~150 ms of parsing, done off
    the event loop (:func:`off_loop`): decoding them, and encoding them again for the
    answer, in the event loop that also serves ingest under ``callmon serve`` stopped every
    call for ~300 ms whenever a supervisor opened a long call's page."""
    start = -tail if tail else 0
    rows = await redis.lrange(schema.call_timeline_key(call_id), start, -1)
    return await off_loop(_json_array, rows)


def _json_array(rows: list[bytes]) -> bytes:
    """Stored messages as one JSON array, the unreadable ones left out."""
    return b"[" + b",".join(row for row in rows if _decode(row) is not None) + b"]"


def _decode_rows(rows: list[bytes]) -> list:
    """Stored messages (window results, alerts), the unreadable ones skipped (see
    :func:`_decode`)."""
    return [d for d in map(_decode, rows) if d is not None]


async def call_alerts(redis, call_id: str) -> list[dict]:
    """Every alert message of one call (raised and cleared), oldest first, each once, with
    acknowledgements, as :func:`alerts_since` gives them: read from the call's own list,
    not by scanning the alert log, which holds every call's alerts and call events."""
    out = _once([a for a in _decode_rows(await redis.lrange(schema.call_alerts_key(call_id), 0, -1))
                 if _served(a, _alert_ok) is not None])
    await _attach_acks(redis, out)
    return out


def _once(messages: list) -> list[dict]:
    """Messages with an id, the first of each id (a write retried after a Redis blip may
    have landed twice)."""
    seen: set[str] = set()
    out = []
    for m in messages:
        if isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"] not in seen:
            seen.add(m["id"])
            out.append(m)
    return out


#: Entries read from the alert log in a round trip: the first read takes LOG_FIRST_CHUNK,
#: each further one twice the last, up to LOG_CHUNK.
LOG_FIRST_CHUNK = 250
LOG_CHUNK = 2000
#: The types of the alert log's entries.
LOG_TYPES = frozenset({"alert", "call_started", "call_ended"})


async def log_chunks(redis, start: str = "-", *, reverse: bool = False
                     ) -> AsyncIterator[list[tuple[str, dict[bytes, bytes]]]]:
    """The alert log's entries (stream id, fields) from ``start`` (a stream id or ``-``)
    on, oldest first, or with ``reverse`` newest first down to ``start``, a round trip's
    worth at a time: read in growing chunks, so a caller that stops early reads little (the
    ended-calls panel, refreshed after every call that ends, needs a few hundred entries; it
    read 20 000 at a time), and one that does not still ends (the log is capped at
    ``PublisherConfig.stream_maxlen``)."""
    low, high = start, "+"
    count = min(LOG_FIRST_CHUNK, LOG_CHUNK)
    while True:
        if reverse:
            entries = await redis.xrevrange(schema.ALERTS_STREAM, max=high, min=low,
                                            count=count)
        else:
            entries = await redis.xrange(schema.ALERTS_STREAM, min=low, max=high, count=count)
        if entries:
            yield [(entry_id.decode(), fields) for entry_id, fields in entries]
        if len(entries) < count:
            return
        count = min(2 * count, LOG_CHUNK)
        last = f"({entries[-1][0].decode()}"  # exclusive: on from the entry after it
        if reverse:
            high = last
        else:
            low = last


async def log_entries(redis, start: str = "-", *, reverse: bool = False
                      ) -> AsyncIterator[tuple[str, dict[bytes, bytes]]]:
    """The alert log's entries one by one, as :func:`log_chunks` reads them."""
    async for chunk in log_chunks(redis, start, reverse=reverse):
        for entry in chunk:
            yield entry


def log_start(since: str | None) -> str:
    """Where the alert log is read from for ``since`` (:func:`stream_id_for`): the start for
    none or ``0``, a duration's time, or the entry *after* a stream id: a client pages on
    with the last ``stream_id`` it was given, and read from that entry, a page began with it
    again (one at a time, never past it), as ``callmon alerts --since`` reads.

    Raises:
        ValueError: ``since`` is none of these (see :func:`stream_id_for`).
    """
    if since is None:
        return "-"
    start = stream_id_for(since)
    if start in ("$", "0"):
        return "-"
    return f"({start}" if start == since else start  # a stream id (a duration is not one)


def _entry_type(fields: dict[bytes, bytes]) -> str:
    """The type an entry states beside its data: filtering on it decodes nothing."""
    return fields.get(b"type", b"").decode(errors="replace")


async def alerts_since(redis, since: str | None, *, limit: int = 500,
                       types: frozenset[str] | None = None, latest: bool = False
                       ) -> list[dict]:
    """Alerts and call events from the log since ``since`` (a duration, ``0`` or a stream
    id; all that is kept without it), oldest first, each once, alerts with their
    acknowledgements. ``types`` keeps only entries of those types. Of more than ``limit``,
    the earliest (paging on from the last ``stream_id``), or with ``latest`` the latest:
    what a page showing "the last hour" needs, where the earliest 500 entries of a busy
    hour are call events from its first minutes."""
    out: list[dict] = []
    seen: set[str] = set()
    async for chunk in log_chunks(redis, log_start(since), reverse=latest):
        if types is not None:
            chunk = [entry for entry in chunk if _entry_type(entry[1]) in types]
        # Up to 5 000 messages when a page (re)loads its feed: decoded off the event loop.
        for entry_id, data in await off_loop(_log_messages, chunk):
            if data["id"] not in seen:
                seen.add(data["id"])
                data["stream_id"] = entry_id
                out.append(data)
                if len(out) >= limit:
                    break
        if len(out) >= limit:
            break
    if latest:
        out.reverse()
    await _attach_acks(redis, [d for d in out if d.get("type") == "alert"])
    return out


def _log_messages(entries: list[tuple[str, dict[bytes, bytes]]]) -> list[tuple[str, dict]]:
    """The messages of alert-log entries with their stream ids; those that cannot be decoded
    or have no id are skipped."""
    out = []
    for entry_id, fields in entries:
        data = _decode(fields.get(b"data"))
        if isinstance(data, dict) and _served(
                data, _alert_ok if data.get("type") == "alert" else _call_event_ok) is not None:
            out.append((entry_id, data))
    return out


async def ended_calls(redis, since: str, *, limit: int = 200) -> list[dict]:
    """Calls that ended since ``since`` (newest first), from their ``call_ended`` events:
    duration, reason, agent and metadata, alerts raised and each role's peak scores."""
    out: list[dict] = []
    seen: set[str] = set()
    async for _, fields in log_entries(redis, log_start(since), reverse=True):
        if _entry_type(fields) not in ("call_ended", ""):
            continue  # the entry says its type: most are alerts, not worth decoding
        e = _decode(fields.get(b"data"))
        if not isinstance(e, dict) or e.get("type") != "call_ended" \
                or _served(e, _call_event_ok) is None or e["id"] in seen:
            continue
        seen.add(e["id"])
        if len(out) >= limit:
            break
        peaks = e.get("peaks") or {}
        out.append({
            "call_id": e["call_id"], "ended_at": e["ts"], "reason": e.get("reason"),
            "duration_s": e.get("duration_s"), "alerts_raised": e.get("alerts_raised") or 0,
            "protocol": e.get("protocol"), "metadata": e.get("metadata") or {},
            "agent": (e.get("metadata") or {}).get("agent"), "peaks": peaks,
            "peak_frustration": (peaks.get("customer") or {}).get("frustration"),
            "peak_distress": (peaks.get("customer") or {}).get("distress"),
        })
    return out


#: How long before the time in its id an alert is looked for in the log: the node that made
#: the id and Redis, which stamps the entry, may keep clocks this far apart.
ID_CLOCK_SKEW_S = 300.0


async def find_alert(redis, alert_id: str) -> dict | None:
    """Look an alert up in the log, from a little before the time its id was made
    (:func:`streamer.schema.id_time`) on, oldest first: an alert held through a Redis outage
    is written after that time, never before. An id that no alert could have has none; an
    entry that cannot be decoded is skipped (see :func:`_decode`), as every other reader of
    the log does."""
    made = schema.id_time(alert_id)
    if made is None:
        return None
    start = f"{max(0, int((made - ID_CLOCK_SKEW_S) * 1000))}-0"
    async for _, fields in log_entries(redis, start):
        if (fields.get(b"id", b"").decode(errors="replace") == alert_id
                and isinstance(data := _decode(fields.get(b"data")), dict)):
            return data
    return None


async def acknowledge(redis, alert_id: str, *, by: str, note: str | None = None) -> dict:
    """Record who acknowledged an alert, when, and their note (first acknowledgement wins)
    and announce it."""
    ack = {"alert_id": alert_id, "by": by, "at": time.time(), "note": note or None}
    created = await redis.hsetnx(schema.ACKS_KEY, alert_id, json.dumps(ack))
    if not created:
        return json.loads(await redis.hget(schema.ACKS_KEY, alert_id))
    await publish(redis, schema.ACKS_CHANNEL, json.dumps({"v": 1, "type": "ack", **ack}),
                  sharded=is_cluster(redis))
    return ack
