"""Notify's stale-state alert on real Redis (db 13): the state written with the real
StateWriter, read with the real StateReader, two notify instances sharing the latch."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest
import redis
from prometheus_client import REGISTRY

from nameko_services.notify.engine import StaleWatch
from shared.settings import load_settings
from shared.state import Account, Balance, Price, StateReader, StateWriter, now_ms
from tests.support.state_feed import clear_state

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/13"
SYMBOLS = ("BTCUSDT", "ETHUSDT")


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    clear_state(conn)
    yield conn
    clear_state(conn)
    conn.close()


@pytest.fixture
def prefix(client: redis.Redis) -> Iterator[str]:
    tag = f"test:notify:{uuid.uuid4().hex[:10]}:stale:"
    yield tag
    for key in client.scan_iter(tag + "*"):
        client.delete(key)


def feed_beats(writer: StateWriter, *, market_age_ms: int = 0, account: bool = True) -> None:
    now = now_ms()
    writer.prices([Price(symbol=s, mark=Decimal(100), last=Decimal(100),
                         updated_ms=now - market_age_ms) for s in SYMBOLS])
    writer.replace_account(Account(balance=Balance(wallet=Decimal(1000)), as_of_ms=now))
    if account:
        writer.heartbeat(account=True, market=True, at_ms=now)


def instances(client: redis.Redis, prefix: str, n: int = 2
              ) -> tuple[StateReader, list[StaleWatch]]:
    reader = StateReader(client, load_settings())
    return reader, [StaleWatch(client, SYMBOLS, reader.max_age_ms, prefix) for _ in range(n)]


def observe_all(reader: StateReader, watches: list[StaleWatch], rounds: int = 3) -> list[str]:
    texts = []
    for _ in range(rounds):
        for watch in watches:
            texts += [f"{a.level}:{a.code}" for a in watch.observe(reader.freshness())]
    return texts


def test_fresh_state_alerts_nothing_and_exports_its_age(
        secrets_env: dict[str, str], client: redis.Redis, prefix: str) -> None:
    feed_beats(StateWriter(client))
    reader, watches = instances(client, prefix)

    texts = observe_all(reader, watches)

    assert texts == []
    assert REGISTRY.get_sample_value("phoenix95_state_age_seconds", {"kind": "market"}) < 5
    assert REGISTRY.get_sample_value("phoenix95_state_age_seconds", {"kind": "account"}) < 5


def test_stale_market_alerts_once_across_instances_and_once_when_back(
        secrets_env: dict[str, str], client: redis.Redis, prefix: str) -> None:
    writer = StateWriter(client)
    reader, watches = instances(client, prefix)
    feed_beats(writer)
    observe_all(reader, watches)

    feed_beats(writer, market_age_ms=9_000)  # the market streams stopped 9 s ago
    down = observe_all(reader, watches)
    feed_beats(writer)
    back = observe_all(reader, watches)

    assert down == ["warning:market_data_stale"]
    assert back == ["info:market_data_stale"]
    assert REGISTRY.get_sample_value("phoenix95_state_age_seconds", {"kind": "market"}) < 5


def test_user_data_stream_down_alerts_account_state_stale(
        secrets_env: dict[str, str], client: redis.Redis, prefix: str) -> None:
    writer = StateWriter(client)
    reader, watches = instances(client, prefix)
    feed_beats(writer)

    writer.mark_down(account=True)
    texts = observe_all(reader, watches)

    assert texts == ["warning:account_state_stale"]
    assert REGISTRY.get_sample_value("phoenix95_state_age_seconds",
                                     {"kind": "account"}) == float("inf")


def test_one_stale_reading_at_start_up_is_not_an_alert(
        secrets_env: dict[str, str], client: redis.Redis, prefix: str) -> None:
    reader, [watch] = instances(client, prefix, n=1)

    first = watch.observe(reader.freshness())  # the feed is not up yet
    feed_beats(StateWriter(client))
    second = watch.observe(reader.freshness())

    assert first == [] and second == []


def test_alert_that_could_not_be_queued_is_sent_by_the_next_check(
        secrets_env: dict[str, str], client: redis.Redis, prefix: str) -> None:
    reader, [watch] = instances(client, prefix, n=1)
    feed_beats(StateWriter(client), market_age_ms=9_000)
    observe_all(reader, [watch], rounds=1)
    [lost] = watch.observe(reader.freshness())

    watch.undo(lost)  # the outbox refused it
    [again] = watch.observe(reader.freshness())

    assert (lost.code, again.code) == ("market_data_stale", "market_data_stale")
    assert again.level == "warning"
