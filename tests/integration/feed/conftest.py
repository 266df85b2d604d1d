"""Fixtures of the feed's integration tests: an in-process paper exchange, the state's Redis
database (cleaned around each test) and market/trade streams of the test's own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from nameko_services.paper_exchange.server import PaperExchange
from tests.support.feed_env import REDIS_URL, feed_settings


@pytest.fixture(scope="module")
def paper(secrets_module_env: None) -> Iterator[PaperExchange]:
    exchange = PaperExchange(feed_settings(), host="127.0.0.1", port=0, state_path="")
    exchange.start()
    yield exchange
    exchange.stop()


@pytest.fixture
def rds() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    client.delete(*client.keys("phoenix95:state:*") or ["-"])
    yield client
    client.delete(*client.keys("phoenix95:state:*") or ["-"])
    client.close()


@pytest.fixture
def streams(rds: redis.Redis) -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:8]
    names = {"market_stream": f"test:feed:market:{tag}", "trade_stream": f"test:feed:trade:{tag}"}
    yield names
    rds.delete(*names.values())
