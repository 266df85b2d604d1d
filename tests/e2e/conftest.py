"""End-to-end fixtures: the system ``scripts/test`` (or ``scripts/up``) started.

The settings come from the same environment the system was started with, so the
tests find its ports, vhost, Redis database and Kafka cluster. Without a running
system these tests skip locally and fail in CI (``CI=true``).
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from typing import Any

import ccxt
import pytest
import redis

from shared.exchange import make_exchange, rest_origin
from shared.settings import Settings, get_settings


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def settings() -> Settings:
    get_settings.cache_clear()
    try:
        s = get_settings()
    except Exception as exc:  # noqa: BLE001 - report why the system cannot be found
        pytest.fail(f"settings for the running system are invalid: {exc}")
    urls = [s.services.url_of(n) + "/health"
            for n in ("brain", "risk", "execute", "notify", "feed")]
    origin = rest_origin(s)  # the paper exchange, in paper mode or as live mode's endpoint
    if origin:
        urls.append(origin + "/health")
    down = [u for u in urls if not _healthy(u)]
    if down:
        message = f"the system is not running (no answer from {', '.join(down)}); " \
                  "run scripts/test, or scripts/up first"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return s


@pytest.fixture(scope="session")
def exchange(settings: Settings) -> ccxt.binanceusdm:
    client = make_exchange(settings)
    client.load_markets()
    return client


@pytest.fixture(scope="session")
def streams(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_streams.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def rpc(settings: Settings) -> Iterator[Any]:
    from shared.signed_rpc import cluster_proxy

    # signed as the operator (security.signing_identity/signing_key from the stack's .env)
    with cluster_proxy(settings.message_queue.amqp_uri, timeout=30) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def api_key(settings: Settings) -> str:
    return sorted(settings.security.api_key_values())[0]


@pytest.fixture(scope="session")
def paper_url(settings: Settings) -> str:
    """The paper exchange the system trades on (its admin API pins prices); skip otherwise."""
    origin = rest_origin(settings)
    if not origin or not _healthy(origin + "/health"):
        pytest.skip("the system does not trade on a paper exchange")
    return origin
