"""What the feed's integration tests share: their Redis database, symbol and settings."""

from __future__ import annotations

from typing import Any

from shared.settings import Settings, load_settings

REDIS_URL = "redis://127.0.0.1:6379/11"
SYMBOL = "BTCUSDT"
MAX_STALENESS_S = 2.0


def feed_settings(**feed: Any) -> Settings:
    """Fast ticks, small candle windows, a 0.2 s heartbeat and 2 s staleness."""
    return load_settings(
        redis_streams={"url": REDIS_URL},
        paper_exchange={"tick_interval_ms": 100},
        feed={"candle_limit": 20, "heartbeat_interval_s": 0.2,
              "max_staleness_seconds": MAX_STALENESS_S, **feed})
