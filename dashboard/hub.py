"""One Redis subscription per dashboard process, fanned out to every connected browser.

Each browser gets a bounded queue and never holds up the others: a browser that falls
``queue_max`` messages behind is dropped, its stream ends, and it reconnects and reloads
what it shows from Redis (it used to lose its oldest messages silently, alerts and call
ends among them, and show ended calls as live until reloaded by hand). The subscription
exists only while a browser is connected (and ``linger_s`` after the last one left, so a
reload does not resubscribe): a node with thousands of calls and nobody watching does not
read every window back from Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque

from streamer import schema
from streamer.aio import cancel
from streamer.redis_client import is_cluster

log = logging.getLogger(__name__)


class Subscriber:
    """One browser's queue of live messages; ``behind`` once it held ``maxlen``."""

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self.items: deque[str] = deque()
        self.ready = asyncio.Event()
        self.behind = False

    def put(self, message: str) -> bool:
        """Queue a message; ``False`` (and nothing queued from then on) once the browser is
        ``maxlen`` messages behind."""
        if len(self.items) >= self.maxlen:
            self.behind = True
            self.items.clear()
        else:
            self.items.append(message)
        self.ready.set()
        return not self.behind

    async def take(self) -> list[str] | None:
        """Every message queued, once there is one (sent to the browser in one write, not
        one each), or ``None`` once the browser fell behind: its stream must end."""
        while not self.items and not self.behind:
            self.ready.clear()
            await self.ready.wait()
        if self.behind:
            return None
        taken = list(self.items)
        self.items.clear()
        return taken


class LiveHub:
    """Relays ``callmon:call:*``, ``callmon:alerts`` and ``callmon:acks`` to subscribers.

    On a Redis Cluster the channels are sharded and cannot be pattern-subscribed: the hub
    subscribes to each live call's channel as it learns of the call (the live-call set at
    start, then ``call_started``/``call_ended`` on ``callmon:alerts``)."""

    def __init__(self, redis, *, queue_max: int = 2000, linger_s: float = 30.0) -> None:
        self.redis = redis
        self.queue_max = queue_max
        self.linger_s = linger_s
        self.subscribers: set[Subscriber] = set()
        self.dropped = 0  # browsers whose stream was ended for falling behind
        self._task: asyncio.Task | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._ready = asyncio.Event()  # set while the subscription is live

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    @property
    def relaying(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        await cancel(self._task)
        self._task = None

    async def subscribe(self, ready_timeout_s: float = 2.0) -> Subscriber:
        """A new browser's queue; starts the Redis subscription if it is not running and
        waits (up to ``ready_timeout_s``) until it is, so the browser misses nothing
        published after its page loaded its state."""
        sub = Subscriber(self.queue_max)
        self.subscribers.add(sub)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if not self.relaying:
            self._ready.clear()
            self._task = asyncio.create_task(self._run(), name="dashboard-hub")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), ready_timeout_s)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        if not self.subscribers and self.relaying and self._idle_timer is None:
            self._idle_timer = asyncio.get_running_loop().call_later(self.linger_s,
                                                                     self._stop_if_idle)

    def _stop_if_idle(self) -> None:
        self._idle_timer = None
        if not self.subscribers and self._task is not None:
            self._task.cancel()
            self._task = None
            self._ready.clear()

    def _fan_out(self, data: bytes | str) -> str:
        text = data.decode() if isinstance(data, bytes) else data
        for sub in list(self.subscribers):
            if not sub.put(text):
                self.dropped += 1
                log.warning("a dashboard browser fell %d messages behind: its live stream is "
                            "ended, and it reloads (%d so far)", sub.maxlen, self.dropped)
                self.unsubscribe(sub)
        return text

    async def _relay(self) -> None:
        pubsub = self.redis.pubsub()
        try:
            await pubsub.psubscribe(schema.call_channel("*"))
            await pubsub.subscribe(schema.ALERTS_CHANNEL, schema.ACKS_CHANNEL)
            self._ready.set()
            async for message in pubsub.listen():
                if message["type"] in ("message", "pmessage"):
                    self._fan_out(message["data"])
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _relay_sharded(self) -> None:
        # Shard channels are looked up in the client's slot map, which a cluster client
        # builds on its first command: before one, every ssubscribe failed.
        await self.redis.initialize()
        pubsub = self.redis.pubsub()
        try:
            await pubsub.ssubscribe(schema.ALERTS_CHANNEL, schema.ACKS_CHANNEL)
            for raw in await self.redis.zrange(schema.LIVE_CALLS_KEY, 0, -1):
                await pubsub.ssubscribe(schema.call_channel(raw.decode()))
            self._ready.set()
            while True:
                message = await pubsub.get_sharded_message(ignore_subscribe_messages=True)
                if message is None:
                    await asyncio.sleep(0.02)  # polled: one wait per shard would add up
                    continue
                if message["type"] != "smessage":
                    continue
                text = self._fan_out(message["data"])
                if message["channel"] == schema.ALERTS_CHANNEL.encode():
                    event = _call_event(text)
                    if event is None:
                        continue
                    channel = schema.call_channel(event["call_id"])
                    if event["type"] == "call_started":
                        await pubsub.ssubscribe(channel)
                    elif event["type"] == "call_ended":
                        await pubsub.sunsubscribe(channel)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _run(self) -> None:
        relay = self._relay_sharded if is_cluster(self.redis) else self._relay
        failures = 0  # in a row, since the relay was last live
        while True:
            try:
                await relay()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: browsers keep their page, we retry
                if self.connected:
                    failures = 0
                if not failures:  # once per outage, the first included (it was silent)
                    log.warning("the dashboard's live stream lost Redis (%s); retrying every "
                                "second", exc)
                failures += 1
                self._ready.clear()
                await asyncio.sleep(1.0)


def _call_event(text: str) -> dict | None:
    """A call event on the alerts channel, or ``None`` for anything else: an alert, or a
    message that is not one of callmon's (not JSON, not an object, no call id), which the
    relay passes on and goes past (it raised out of the relay, which lost what was
    published while it restarted)."""
    try:
        event = json.loads(text)
    except ValueError:
        return None
    if (not isinstance(event, dict) or event.get("type") not in ("call_started", "call_ended")
            or not isinstance(event.get("call_id"), str)):
        return None
    return event
