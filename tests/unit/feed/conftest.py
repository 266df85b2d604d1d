"""Feed unit tests: the parsers, the books and their Redis writes (real Redis, db 11)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from shared.names import (
    STATE_BALANCE_KEY,
    STATE_FEED_KEY,
    STATE_ORDERS_KEY,
    STATE_POSITIONS_KEY,
    STATE_PRICES_KEY,
)
from shared.settings import Settings, load_settings

FEED_REDIS_URL = "redis://127.0.0.1:6379/11"


@pytest.fixture
def settings(secrets_env: dict[str, str]) -> Settings:
    return load_settings(redis_streams={"url": FEED_REDIS_URL})


@pytest.fixture
def rds() -> Iterator[redis.Redis]:
    """db 11, the state keys cleared (the state key names are fixed by shared.names)."""
    client = redis.Redis.from_url(FEED_REDIS_URL, decode_responses=True)
    keys = [STATE_PRICES_KEY, STATE_BALANCE_KEY, STATE_POSITIONS_KEY, STATE_ORDERS_KEY,
            STATE_FEED_KEY]
    client.delete(*keys, *client.keys("phoenix95:state:candle*"))
    yield client
    client.delete(*keys, *client.keys("phoenix95:state:candle*"))
    client.close()
