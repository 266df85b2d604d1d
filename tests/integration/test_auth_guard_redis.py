"""AuthGuard on a real Redis (DB 5): failures counted per client, lockout with a real TTL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from shared.web import AuthGuard

REDIS_URL = "redis://127.0.0.1:6379/5"


@pytest.fixture()
def guard() -> Iterator[AuthGuard]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis at 127.0.0.1:6379")
    prefix = f"test:authfail:{uuid.uuid4().hex}:"
    g = AuthGuard(client, limit=3, window_s=60, max_lockout_s=8)
    g.PREFIX = prefix  # type: ignore[misc]
    yield g
    keys = list(client.scan_iter(prefix + "*"))
    if keys:
        client.delete(*keys)


def test_lockout_starts_at_the_limit_and_is_a_real_ttl(guard: AuthGuard) -> None:
    before = [guard.failed("10.1.1.1") for _ in range(2)]
    assert before == [0, 0] and guard.retry_after("10.1.1.1") == 0
    assert guard.failed("10.1.1.1") == 1
    assert guard.retry_after("10.1.1.1") == 1
    assert guard.failed("10.1.1.1") == 2
    assert 1 <= guard.retry_after("10.1.1.1") <= 2
    assert guard.retry_after("10.1.1.2") == 0


def test_failure_count_expires_with_the_window(guard: AuthGuard) -> None:
    guard.failed("10.1.1.3")
    ttl = guard.redis.ttl(guard.PREFIX + "n:10.1.1.3")
    assert 0 < int(ttl) <= 60  # type: ignore[arg-type]
