"""One Redis subscription per dashboard process, fanned out to every connected browser.

Each browser gets a bounded queue: a slow browser loses its oldest window updates and
never holds up the others (alerts and acknowledgements are also in Redis, so a browser
that reconnects reloads them)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from dashboard.store import ACKS_CHANNEL
from streamer import schema
from streamer.aio import cancel

log = logging.getLogger(__name__)


class Subscriber:
    def __init__(self, maxlen: int) -> None:
        self.items: deque[str] = deque(maxlen=maxlen)
        self.ready = asyncio.Event()

    def put(self, message: str) -> None:
        self.items.append(message)
        self.ready.set()

    async def get(self) -> str:
        while not self.items:
            self.ready.clear()
            await self.ready.wait()
        return self.items.popleft()


class LiveHub:
    """Relays ``callmon:call:*``, ``callmon:alerts`` and ``callmon:acks`` to subscribers."""

    def __init__(self, redis, *, queue_max: int = 2000) -> None:
        self.redis = redis
        self.queue_max = queue_max
        self.subscribers: set[Subscriber] = set()
        self._task: asyncio.Task | None = None
        self.connected = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="dashboard-hub")

    async def stop(self) -> None:
        await cancel(self._task)

    def subscribe(self) -> Subscriber:
        sub = Subscriber(self.queue_max)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    async def _run(self) -> None:
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.psubscribe(schema.call_channel("*"))
                await pubsub.subscribe(schema.ALERTS_CHANNEL, ACKS_CHANNEL)
                self.connected = True
                async for message in pubsub.listen():
                    if message["type"] not in ("message", "pmessage"):
                        continue
                    data = message["data"]
                    text = data.decode() if isinstance(data, bytes) else data
                    for sub in list(self.subscribers):
                        sub.put(text)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: browsers keep their page, we retry
                if self.connected:
                    log.warning("dashboard lost Redis (%s); retrying", exc)
                self.connected = False
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
