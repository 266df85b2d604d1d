"""The one place a Redis client is made: direct, through Sentinel, with an ACL user, over TLS.

Every process builds its clients here from ``RedisStreamsSettings`` so a deployment can move
from a single Redis to a replicated one behind Sentinel, or add ACL users and TLS, by
configuration alone. The keyword arguments are redis-py's connection options (timeouts,
``decode_responses``, ``health_check_interval`` ...), passed through unchanged.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import ExponentialBackoff
from redis.connection import parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel

from shared.settings import RedisStreamsSettings

# Through Sentinel, a command that meets a dead master is retried for about as long as a
# failover takes (down-after 1.5 s + election; measured ~3 s in the HA lab): 0.05 s, 0.1 s,
# ... then every 0.5 s, 16 times, ~6.5 s in all; each new connection asks Sentinel for the
# master again. A write whose answer was lost with the old master may run twice: the
# streams' readers and the webhook's idempotency key absorb a repeated record.
SENTINEL_RETRIES = 16
SENTINEL_BACKOFF = {"cap": 0.5, "base": 0.05}


def _sentinel_addresses(settings: RedisStreamsSettings) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for item in settings.sentinels:
        host, _, port = item.rpartition(":")
        out.append((host or "127.0.0.1", int(port or 26379)))
    return out


def connection_options(settings: RedisStreamsSettings, **options: Any) -> dict[str, Any]:
    """redis-py keyword arguments for ``settings`` (credentials, TLS, db), ``options`` on top."""
    parsed = parse_url(settings.url)
    opts: dict[str, Any] = {k: v for k, v in parsed.items() if k not in ("connection_class",)}
    opts.update(_credentials(settings))
    tls = settings.tls or settings.url.startswith("rediss://")
    if tls:
        opts["ssl"] = True
        if settings.tls_ca_certs:
            opts["ssl_ca_certs"] = settings.tls_ca_certs
        if settings.tls_certfile:
            opts["ssl_certfile"] = settings.tls_certfile
        if settings.tls_keyfile:
            opts["ssl_keyfile"] = settings.tls_keyfile
    opts.update(options)
    return opts


def redis_client(settings: RedisStreamsSettings, **options: Any) -> redis.Redis:
    """A synchronous client for ``settings``; through Sentinel's current master when set."""
    if settings.sentinels:
        opts = connection_options(settings, **options)
        for key in ("host", "port", "unix_socket_path"):
            opts.pop(key, None)
        sentinel_opts = {k: v for k, v in opts.items()
                         # not the data user's credentials: Sentinels have their own
                         # (none in the lab), and an unknown user is refused there
                         if k in ("socket_timeout", "socket_connect_timeout",
                                  "ssl", "ssl_ca_certs", "ssl_certfile",
                                  "ssl_keyfile")}
        sentinel = Sentinel(_sentinel_addresses(settings), sentinel_kwargs=sentinel_opts)
        opts.setdefault("retry", Retry(ExponentialBackoff(**SENTINEL_BACKOFF),
                                       SENTINEL_RETRIES))
        return sentinel.master_for(settings.sentinel_master, redis_class=redis.Redis, **opts)
    if settings.url.startswith("unix://"):
        return redis.Redis.from_url(settings.url, **_credentials(settings), **options)
    return redis.Redis(**connection_options(settings, **options))


def async_redis_client(settings: RedisStreamsSettings, **options: Any) -> aioredis.Redis:
    """The asyncio twin of :func:`redis_client`."""
    if settings.sentinels:
        opts = connection_options(settings, **options)
        for key in ("host", "port", "unix_socket_path"):
            opts.pop(key, None)
        sentinel = AsyncSentinel(_sentinel_addresses(settings))
        opts.setdefault("retry", AsyncRetry(ExponentialBackoff(**SENTINEL_BACKOFF),
                                            SENTINEL_RETRIES))
        return sentinel.master_for(settings.sentinel_master, redis_class=aioredis.Redis, **opts)
    if settings.url.startswith("unix://"):
        return aioredis.Redis.from_url(settings.url, **_credentials(settings), **options)
    return aioredis.Redis(**connection_options(settings, **options))


def _credentials(settings: RedisStreamsSettings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if settings.username:
        out["username"] = settings.username
    if settings.password.get_secret_value():
        out["password"] = settings.password.get_secret_value()
    return out


def redis_from_url(url: str, **options: Any) -> redis.Redis:
    """A client for a bare URL (tools and probes that are given one); prefer
    :func:`redis_client` with the settings wherever they are at hand."""
    return redis_client(RedisStreamsSettings(url=url), **options)
