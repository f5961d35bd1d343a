"""Following alerts: replay the capped stream ``callmon:alerts:log`` from a point, then
follow live — without gaps or repeats between the replay and the live part."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from typing import Any

from streamer import redis_client, schema

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_STREAM_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")


def stream_id_for(since: str | None) -> str:
    """``None`` → only new entries; ``0`` → everything; ``10m`` → from ten minutes ago;
    ``1764400000000-0`` (or its milliseconds alone) → from that stream id (:func:`follow_alerts`
    replays the entries after it, as XREAD does: give it the last id seen).

    Raises:
        ValueError: anything else, in words a person can act on (Redis would only say
            "Invalid stream ID specified as stream command argument").
    """
    if since is None:
        return "$"
    m = _DURATION.match(since)
    if m:
        seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return f"{int((time.time() - seconds) * 1000)}-0"
    if not _STREAM_ID.match(since):
        raise ValueError(f"since {since!r} is neither a duration (30s, 10m, 2h, 1d), 0 (all "
                         "that is kept) nor a stream id (1764400000000-0)")
    return since


#: After the first, every this many skipped entries are said (see :func:`follow_alerts`).
SKIPPED_SAID_EVERY = 100_000


def event_of(fields: dict[bytes, bytes]) -> dict | None:
    """The payload of an alert-log entry, if it is an alert or call event: a JSON object
    with a string ``id`` and ``type``."""
    try:
        data = json.loads(fields[b"data"])
    except (KeyError, ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
        return None
    if isinstance(data, dict) and isinstance(data.get("id"), str) \
            and isinstance(data.get("type"), str):
        return data
    return None


async def follow_alerts(url: str, *, since: str | None, on_message: Callable[[dict], None],
                        stop: asyncio.Event | None = None, block_ms: int = 1000,
                        on_status: Callable[[str], None] | None = None) -> None:
    """Read ``callmon:alerts:log`` with XREAD from ``since`` onwards and call ``on_message``
    with each entry's decoded payload, de-duplicated by ``id``. Reading the stream (rather
    than pub/sub) is what lets a consumer that was away catch up; reconnects resume after
    the last id seen. An entry that is no alert or call event (:func:`event_of`) is skipped
    and said through ``on_status``: one bad write must not stop every consumer.

    Raises:
        ConnectionError: Redis cannot be reached at the start (later outages are waited
            out, and reported through ``on_status`` when it goes away and comes back).
    """
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    last = stream_id_for(since)
    shown = redis_client.display_url(url)
    seen: dict[str, None] = {}  # insertion-ordered, trimmed to the most recent ids
    skipped = 0
    client = redis_client.connect(url, timeout_s=None)
    away = False
    try:
        try:
            exists = await client.exists(schema.ALERTS_STREAM)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise ConnectionError(f"cannot reach Redis at {shown}: {exc}") from None
        if last == "$":  # pin "now" to a concrete id so a reconnect does not skip entries
            info = await client.xinfo_stream(schema.ALERTS_STREAM) if exists else None
            last = info["last-generated-id"].decode() if info else "0"
        while stop is None or not stop.is_set():
            reply: Any
            try:
                reply = await client.xread({schema.ALERTS_STREAM: last}, block=block_ms, count=500)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if not away and on_status is not None:
                    on_status(f"Redis at {shown} went away ({exc}); waiting for it")
                away = True
                await asyncio.sleep(0.5)  # Redis away: retry from the same id
                continue
            if away and on_status is not None:
                on_status(f"Redis at {shown} is back; resuming after {last}")
            away = False
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    data = event_of(fields)
                    if data is None:
                        skipped += 1
                        if on_status is not None and skipped == 1:
                            on_status(f"skipping entry {last} of {schema.ALERTS_STREAM}: not an "
                                      "alert or call event (further ones are counted, every "
                                      f"{SKIPPED_SAID_EVERY:,} said)")
                        elif on_status is not None and skipped % SKIPPED_SAID_EVERY == 0:
                            on_status(f"skipped {skipped:,} entries of {schema.ALERTS_STREAM} "
                                      "that are not alerts or call events")
                        continue
                    if data["id"] in seen:
                        continue
                    seen[data["id"]] = None
                    if len(seen) > 100_000:
                        del seen[next(iter(seen))]
                    on_message(data)
    finally:
        await client.aclose()
