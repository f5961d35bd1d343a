"""Node liveness: each streamer node keeps a heartbeat key in Redis; any node or dashboard
ends the calls of a node whose heartbeat has expired (reason ``lost``), so a crashed
process never leaves calls live forever."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from streamer import schema
from streamer.aio import cancel
from streamer.publisher import PublisherConfig, queue_event
from streamer.redis_client import is_cluster

log = logging.getLogger(__name__)

#: Longest wait for one claim step: a call start or end never waits on a stalled Redis longer.
REDIS_STEP_S = 1.0


class CallClaims:
    """Cluster-wide ownership of call ids: ``callmon:call:{id}:owner`` holds the node of the
    live call, set only if absent and expiring after ``ttl_s`` unless the node's heartbeat
    renews it, so a crashed node's ids free themselves."""

    def __init__(self, redis, node: str, *, ttl_s: float = 15.0) -> None:
        self.redis = redis
        self.node = node
        self.ttl_ms = int(ttl_s * 1000)

    async def claim(self, call_id: str) -> str | None:
        """Claim ``call_id``; return the node that holds it already, or ``None`` when it is
        ours now (also when Redis cannot be asked: a node does not refuse calls because
        Redis is away; it says so in the log)."""
        key = schema.call_owner_key(call_id)
        try:
            if await asyncio.wait_for(self.redis.set(key, self.node, nx=True, px=self.ttl_ms),
                                      REDIS_STEP_S):
                return None
            owner = await asyncio.wait_for(self.redis.get(key), REDIS_STEP_S)
        except Exception as exc:
            log.warning("could not claim call id %s in Redis (%s): accepted unchecked",
                        call_id, exc)
            return None
        owner = owner.decode() if isinstance(owner, bytes) else owner
        if owner == self.node or owner is None:
            return None
        return owner

    async def release(self, call_id: str) -> None:
        key = schema.call_owner_key(call_id)
        try:
            owner = await asyncio.wait_for(self.redis.get(key), REDIS_STEP_S)
            if owner is not None and owner.decode() == self.node:
                await asyncio.wait_for(self.redis.delete(key), REDIS_STEP_S)
        except Exception as exc:  # it expires by itself
            log.debug("could not release call id %s: %s", call_id, exc)

    async def renew(self, call_ids: list[str]) -> None:
        for call_id in call_ids:  # one slot per call on a cluster: no cross-slot pipeline
            await self.redis.set(schema.call_owner_key(call_id), self.node, px=self.ttl_ms)


class Heartbeat:
    """Refreshes ``callmon:node:{node}`` (expiring after ``ttl_s``) every ``interval_s``,
    and the claims on the node's live call ids."""

    def __init__(self, redis, node: str, *, interval_s: float = 5.0, ttl_s: float = 15.0,
                 info: Callable[[], dict] | None = None,
                 claims: tuple[CallClaims, Callable[[], list[str]]] | None = None) -> None:
        self.redis = redis
        self.node = node
        self.interval_s = interval_s
        self.ttl_ms = int(ttl_s * 1000)
        self.info: Callable[[], dict] = info or dict
        self.claims = claims
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="node-heartbeat")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        try:
            await self.redis.delete(schema.node_key(self.node))
        except Exception:  # Redis away at shutdown: the key expires by itself
            pass

    async def _run(self) -> None:
        while True:
            try:
                await self.redis.set(schema.node_key(self.node),
                                     json.dumps({"node": self.node, "ts": time.time(),
                                                 **self.info()}), px=self.ttl_ms)
                if self.claims is not None:
                    claims, live = self.claims
                    await claims.renew(live())
            except Exception as exc:  # the publisher reports Redis health; keep beating
                log.debug("heartbeat failed: %s", exc)
            await asyncio.sleep(self.interval_s)


async def orphaned_calls(redis, *, own_node: str | None = None) -> list[tuple[str, dict | None]]:
    """Live calls whose node has no heartbeat (never this process's own), each with its
    start event (``None`` where it is missing or cannot be read: such a call is ended too,
    not left live for ever). Three round trips whatever the number of calls (the live set,
    every start, every node's heartbeat), not two per call on every pass of every process."""
    ids = [raw.decode() for raw in await redis.zrange(schema.LIVE_CALLS_KEY, 0, -1)]
    if not ids:
        return []
    pipe = redis.pipeline(transaction=False)
    for call_id in ids:
        pipe.hget(schema.call_state_key(call_id), "start")
    starts = [_start_event(raw) for raw in await pipe.execute()]
    # Each call's node, None where its start names none a node could have written.
    nodes = [node if isinstance(node := (start or {}).get("node"), str) and node else None
             for start in starts]
    alive = {own_node} if own_node else set()  # we know our own calls live, whatever Redis lost
    others = sorted({node for node in nodes if node is not None} - alive)
    if others:
        pipe = redis.pipeline(transaction=False)
        for node in others:
            pipe.exists(schema.node_key(node))
        alive |= {node for node, up in zip(others, await pipe.execute(), strict=True) if up}
    return [(call_id, start) for call_id, start, node in zip(ids, starts, nodes, strict=True)
            if node not in alive]


def _start_event(raw: bytes | None) -> dict | None:
    """A stored ``call_started`` message, or ``None`` if it is absent or unreadable: one
    bad entry made every reaper pass fail, so that no lost call was ended any more."""
    try:
        start = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        return None
    return start if isinstance(start, dict) else None


async def reap_lost_calls(redis, *, own_node: str | None = None,
                          suspects: dict[str, float] | None = None,
                          grace_s: float = 0.0) -> list[str]:
    """End every live call whose node has had no heartbeat for ``grace_s`` (tracked in
    ``suspects`` across passes); returns the call ids ended here.

    Safe to run from many processes at once: a call is claimed with ``SET NX`` first. The
    grace period covers a Redis restart that lost heartbeat keys which their nodes are
    about to refresh.
    """
    ended = []
    now = time.monotonic()
    orphans = await orphaned_calls(redis, own_node=own_node)
    if suspects is not None:
        for stale in set(suspects) - {c for c, _ in orphans}:
            del suspects[stale]
    for call_id, start in orphans:
        if suspects is not None:
            first = suspects.setdefault(call_id, now)
            if now - first < grace_s:
                continue
        node = (start or {}).get("node")
        if not await redis.set(schema.reaped_key(call_id), "1", nx=True, ex=3600):
            continue  # another reaper has it
        event = schema.CallEvent(
            id=schema.new_id(), type="call_ended", call_id=call_id,
            roles=tuple(roles) if isinstance(roles := (start or {}).get("roles"), list) else (),
            sample_rate=(start or {}).get("sample_rate", 0),
            encoding=(start or {}).get("encoding", ""), protocol=(start or {}).get("protocol", ""),
            metadata=(start or {}).get("metadata", {}), reason="lost",
            duration_s=round(time.time() - ts, 3) if isinstance(ts := (start or {}).get("ts"),
                                                                  int | float) else None,
            node=node if isinstance(node, str) else "")
        pipe = redis.pipeline(transaction=False)
        queue_event(pipe, event, PublisherConfig(), sharded=is_cluster(redis))
        await pipe.execute()
        log.warning("call %s marked lost: node %s stopped heart-beating", call_id, node)
        ended.append(call_id)
        if suspects is not None:
            suspects.pop(call_id, None)
    return ended


class Reaper:
    """Runs :func:`reap_lost_calls` every ``interval_s``; a call is ended once its node
    has been silent for two passes."""

    def __init__(self, redis, *, interval_s: float = 5.0, own_node: str | None = None) -> None:
        self.redis = redis
        self.interval_s = interval_s
        self.own_node = own_node
        self.suspects: dict[str, float] = {}
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lost-call-reaper")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await reap_lost_calls(self.redis, own_node=self.own_node,
                                      suspects=self.suspects, grace_s=self.interval_s)
            except Exception as exc:
                log.debug("reaper pass failed: %s", exc)
