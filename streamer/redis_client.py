"""One way to open Redis, standalone or Cluster.

A ``redis+cluster://host:port`` (or ``rediss+cluster://``) URL names any node of a Redis
Cluster and gives redis-py's cluster client; any other URL a plain client. On a cluster,
pub/sub is sharded (``SPUBLISH``/``SSUBSCRIBE``): each call's channel lives on the shard
that owns its hash tag, so window results are not broadcast to every node.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def display_url(url: str) -> str:
    """``url`` as banners, logs and error messages show it: a password in it (``redis://user:
    secret@host``, ``?password=secret``) becomes ``***``, so logs do not hold the credential."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


def connect(url: str, *, timeout_s: float | None = 2.0, connect_timeout_s: float = 2.0) -> Any:
    """A ``redis.asyncio`` client (``RedisCluster`` for a cluster URL)."""
    scheme, rest = url.split("://", 1) if "://" in url else ("redis", url)
    if scheme in CLUSTER_SCHEMES:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(f"{CLUSTER_SCHEMES[scheme]}://{rest}",
                                     socket_timeout=timeout_s,
                                     socket_connect_timeout=connect_timeout_s)
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    # One retry on a fresh connection: after Redis restarts, every pooled connection is
    # stale and would otherwise fail its next command once.
    return aioredis.Redis.from_url(url, socket_timeout=timeout_s,
                                   socket_connect_timeout=connect_timeout_s,
                                   retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
                                   retry_on_error=[RedisConnectionError],
                                   retry_on_timeout=False, health_check_interval=10)


def is_cluster(client: Any) -> bool:
    from redis.asyncio.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def publish(target: Any, channel: str, payload: str, *, sharded: bool) -> Any:
    """PUBLISH, or SPUBLISH on a cluster, on a client or a pipeline."""
    return target.spublish(channel, payload) if sharded else target.publish(channel, payload)
