"""Publishing to Redis without losing alerts.

Window results are published on ``callmon:call:{id}``, appended to the call's timeline
and kept as its latest state. Alerts and call lifecycle events go to pub/sub
``callmon:alerts`` *and* the capped stream ``callmon:alerts:log``. On a Redis Cluster the
pub/sub is sharded (SPUBLISH).

Nothing here ever blocks ingest: callers enqueue and return. A flusher task writes in
pipelines. If Redis is unreachable, alerts and lifecycle events wait in a bounded outbox,
in order, and are written when it returns (a write whose reply was lost may be repeated:
consumers de-duplicate by ``id``). Window results wait in a smaller bounded buffer that
drops its oldest entries, counted, while Redis is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from streamer import schema
from streamer.aio import cancel, wait_event
from streamer.redis_client import is_cluster, publish
from streamer.schema import Alert, CallEvent, WindowResult

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PublisherConfig:
    """Bounds and retention.

    Attributes:
        outbox_max: alerts and lifecycle events held while Redis is away (oldest dropped
            beyond it, counted in ``events_dropped``).
        results_max: window results held while Redis is away.
        timeline_max: window results kept per call (about 2 h of one channel at 1 s hop).
        stream_maxlen: approximate cap of ``callmon:alerts:log``.
        alerts_max: alert messages kept per call (its page's history; a call raises a few).
        ended_ttl_s: how long an ended call's state, timeline and alerts stay in Redis.
    """

    outbox_max: int = 100_000
    results_max: int = 20_000
    timeline_max: int = 7_200
    stream_maxlen: int = 100_000
    alerts_max: int = 1_000
    ended_ttl_s: int = 24 * 3600
    batch_max: int = 500
    retry_initial_s: float = 0.1
    retry_max_s: float = 2.0
    idle_ping_s: float = 5.0


class RedisPublisher:
    """Owns the Redis connection used for publishing.

    Args:
        client: a ``redis.asyncio.Redis`` (or cluster) client.
    """

    def __init__(self, client, *, config: PublisherConfig | None = None, node: str = "") -> None:
        self.client = client
        self.sharded = is_cluster(client)
        self.config = config or PublisherConfig()
        self.node = node
        self._outbox: deque[CallEvent | Alert] = deque()
        self._results: deque[_Queued] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._flushed = asyncio.Event()
        self._flushed.set()
        self._attempted = asyncio.Event()
        self._in_flight = 0  # events taken from the outbox by the write under way
        self.connected = False
        self.last_error: str | None = None
        self.degraded_since: float | None = None
        self.events_published = 0
        self.events_dropped = 0
        self.results_published = 0
        self.results_dropped = 0
        #: The ``call_started`` events of this node's live calls, re-announced after every
        #: outage: a Redis that came back empty (restarted without its data) learns them again.
        self.live_calls: Callable[[], list[CallEvent]] = list
        self.reannounced = 0

    # -- enqueueing (never blocks) -------------------------------------------------------

    def publish_result(self, result: WindowResult, payload: str | None = None) -> None:
        """Queue a window result; ``payload``: its JSON when the caller already has it."""
        if len(self._results) >= self.config.results_max:
            self._results.popleft()
            self.results_dropped += 1
        self._results.append(_Queued(result.call_id, result.role, payload or schema.dumps(result)))
        self._kick()

    def publish_event(self, event: Alert | CallEvent) -> None:
        if len(self._outbox) >= self.config.outbox_max:
            self._outbox.popleft()
            self.events_dropped += 1
            log.error("alert outbox full (%d): oldest event dropped", self.config.outbox_max)
        self._outbox.append(event)
        self._kick()

    def _kick(self) -> None:
        self._flushed.clear()
        self._wakeup.set()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def undelivered(self) -> int:
        """Alerts and call events waiting for Redis, the write under way included."""
        return len(self._outbox) + self._in_flight

    @property
    def healthy(self) -> bool:
        return self.connected and len(self._outbox) < self.config.batch_max

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="redis-publisher")

    async def first_attempt(self, timeout_s: float) -> bool:
        """Wait for the first round trip to Redis (success or failure); True if connected."""
        await wait_event(self._attempted, timeout_s)
        return self.connected

    async def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        return await wait_event(self._flushed, timeout_s)

    async def stop(self, *, flush_timeout_s: float = 5.0) -> None:
        if not await self.flush(flush_timeout_s):
            log.warning("stopping with %d alerts/events not delivered to Redis", self.undelivered)
        await cancel(self._task)
        self._task = None

    # -- writing ---------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.config.retry_initial_s
        while True:
            if not self._outbox and not self._results:
                self._flushed.set()
            if not self._outbox and not self._results and self.connected:
                self._wakeup.clear()
                # Idle: a PING every few seconds keeps the health state true.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self.config.idle_ping_s)
            events = list(_take(self._outbox, self.config.batch_max))
            results = list(_take(self._results, self.config.batch_max))
            self._in_flight = len(events)
            try:
                await self._write(events, results)
            except asyncio.CancelledError:
                self._outbox.extendleft(reversed(events))  # not confirmed: still held
                self._in_flight = 0
                raise
            except Exception as exc:
                self._attempted.set()  # ConnectionError, TimeoutError, BusyLoadingError …
                # Put back what was not confirmed, in order, and retry with backoff.
                self._outbox.extendleft(reversed(events))
                self._in_flight = 0
                self._results.extendleft(reversed(results))
                while len(self._results) > self.config.results_max:
                    self._results.popleft()
                    self.results_dropped += 1
                if self.connected or self.degraded_since is None:
                    log.warning("Redis unavailable (%s); holding %d alerts/events", exc,
                                len(self._outbox))
                    self.degraded_since = time.time()
                self.connected = False
                self.last_error = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.retry_max_s)
                continue
            self._attempted.set()
            self._in_flight = 0
            if not self.connected:
                if self.degraded_since is not None:
                    log.info("Redis back; delivered %d held alerts/events", len(events))
                    await self._reannounce()
                self.connected = True
                self.degraded_since = None
                self.last_error = None
            delay = self.config.retry_initial_s
            self.events_published += len(events)
            self.results_published += len(results)

    async def _reannounce(self) -> None:
        """Put this node's live calls back in the live set and their state (idempotent: the
        same start event as before, nothing published again)."""
        starts = [e for e in self.live_calls() if e.type == "call_started"]
        if not starts:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for event in starts:
                pipe.zadd(schema.LIVE_CALLS_KEY, {event.call_id: event.ts})
                pipe.hset(schema.call_state_key(event.call_id),
                          mapping={"start": schema.dumps(event)})
            await pipe.execute()
            self.reannounced += len(starts)
            log.info("re-announced %d live calls to Redis", len(starts))
        except Exception as exc:  # the next outage and reconnect will try again
            log.warning("could not re-announce live calls: %s", exc)

    async def _write(self, events: list, results: list[_Queued]) -> None:
        if not events and not results:
            await self.client.ping()
            return
        cfg = self.config
        pipe = self.client.pipeline(transaction=False)
        for item in events:
            queue_event(pipe, item, cfg, sharded=self.sharded)
        for result in results:
            pipe.eval(RESULT_SCRIPT, 2, schema.call_timeline_key(result.call_id),
                      schema.call_state_key(result.call_id), schema.call_channel(result.call_id),
                      result.payload, f"last:{result.role}", cfg.timeline_max, cfg.ended_ttl_s,
                      "SPUBLISH" if self.sharded else "PUBLISH")
        replies = await pipe.execute(raise_on_error=False)
        errors = [r for r in replies if isinstance(r, Exception)]
        outage = next((e for e in errors if is_outage(e)), None)
        if outage is not None:
            raise outage  # held and retried, like a lost connection
        for error in errors:  # a command Redis refused for good (e.g. a key of the wrong type)
            log.error("Redis refused a write: %s", error)


#: A window result's writes, as one command: published on the call's channel, appended to
#: its timeline (capped), and kept as its role's latest state. Every per-call key expires: a
#: result written after its call's end event (or a timeline it creates) must not live for
#: ever. The keys and the channel share the call's hash tag, so on a Cluster they are in
#: one slot, as a script's keys must be. (As five commands, redis-py's packing and reply
#: parsing took 123 us of the event loop per result on a 2-core AMD EPYC, as one 44, for 4 us
#: more of Redis's CPU: docs/results/bench_result_writes.py.)
#: KEYS: timeline, state. ARGV: channel, payload, state field, timeline length, TTL s,
#: PUBLISH or SPUBLISH.
RESULT_SCRIPT = """
redis.call(ARGV[6], ARGV[1], ARGV[2])
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[4]), -1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[2])
return 1
"""

#: Error replies that mean Redis cannot take writes *now* (out of memory, a read-only
#: replica, a failed snapshot, loading, busy script, no master): an outage, not a bad command.
OUTAGE_REPLIES = ("OOM", "READONLY", "MISCONF", "LOADING", "BUSY", "MASTERDOWN", "NOREPLICAS",
                  "TRYAGAIN", "CLUSTERDOWN")


def is_outage(error: Exception) -> bool:
    """Whether a failed write should be held and retried (Redis cannot take writes now)."""
    from redis import exceptions as rx

    transient = (ConnectionError, TimeoutError, OSError, rx.ConnectionError, rx.TimeoutError,
                 rx.OutOfMemoryError, rx.ReadOnlyError, rx.MasterDownError, rx.TryAgainError,
                 rx.ClusterDownError)
    if isinstance(error, transient):
        return True
    return isinstance(error, rx.ResponseError) and str(error).split(" ", 1)[0] in OUTAGE_REPLIES


def queue_event(pipe, item: Alert | CallEvent, config: PublisherConfig, *,
                sharded: bool = False) -> None:
    """Add the writes of one alert or call event to a Redis pipeline: pub/sub, the alert
    log, the live-call set and the call's state and alerts. Shared by the publisher and the
    reaper of lost calls, so both leave Redis in the same shape."""
    payload = schema.dumps(item)
    publish(pipe, schema.ALERTS_CHANNEL, payload, sharded=sharded)
    pipe.xadd(schema.ALERTS_STREAM, {"id": item.id, "type": item.type, "data": payload},
              maxlen=config.stream_maxlen, approximate=True)
    state_key = schema.call_state_key(item.call_id)
    if isinstance(item, CallEvent) and item.type == "call_started":
        # A reused call id starts clean: no end state, alerts or timeline of the old call.
        pipe.delete(state_key, schema.call_timeline_key(item.call_id),
                    schema.call_alerts_key(item.call_id))
        pipe.zadd(schema.LIVE_CALLS_KEY, {item.call_id: item.ts})
        pipe.hset(state_key, mapping={"start": payload})
    elif isinstance(item, CallEvent):
        pipe.zrem(schema.LIVE_CALLS_KEY, item.call_id)
        pipe.hset(state_key, mapping={"end": payload})
        pipe.expire(state_key, config.ended_ttl_s)
        pipe.expire(schema.call_timeline_key(item.call_id), config.ended_ttl_s)
        pipe.expire(schema.call_alerts_key(item.call_id), config.ended_ttl_s)
    else:
        pipe.hset(state_key, mapping={f"alert:{item.role}:{item.kind}": payload})
        alerts = schema.call_alerts_key(item.call_id)
        pipe.rpush(alerts, payload)
        pipe.ltrim(alerts, -config.alerts_max, -1)
        pipe.expire(alerts, config.ended_ttl_s)  # renewed by each alert, as the timeline is


class _Queued(NamedTuple):
    """A window result waiting for Redis, already serialised."""

    call_id: str
    role: str
    payload: str


def _take(queue: deque, n: int):
    for _ in range(min(n, len(queue))):
        yield queue.popleft()
