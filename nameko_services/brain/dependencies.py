"""Brain's dependencies: the intake gate (idempotency, rate limit) and the market view."""

from __future__ import annotations

import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import redis
from nameko.extensions import DependencyProvider

from nameko_services.brain.engine import KLINE_LIMIT, KLINE_TIMEFRAME, BrainEngine
from shared.market import ExchangeGateway
from shared.nameko_deps import make_redis
from shared.names import IDEMPOTENCY_KEY_PREFIX, RATE_LIMIT_PREFIX
from shared.settings import Settings, get_settings

IDEMPOTENCY_TTL_S = 24 * 3600


class IntakeGate:
    """Shared by every brain instance through Redis, so the limits hold cluster-wide."""

    def __init__(self, client: redis.Redis, rate_per_minute: int) -> None:
        self._redis = client
        self._rate = rate_per_minute

    def claim(self, idempotency_key: str, signal_id: str) -> str | None:
        """Claim the key for ``signal_id``; return the earlier signal id if already claimed."""
        key = IDEMPOTENCY_KEY_PREFIX + idempotency_key
        if self._redis.set(key, signal_id, nx=True, ex=IDEMPOTENCY_TTL_S):
            return None
        earlier = self._redis.get(key)
        return str(earlier) if earlier is not None else None

    def release(self, idempotency_key: str, signal_id: str) -> None:
        """Undo a claim whose signal could not be queued, so TradingView's retry goes through."""
        key = IDEMPOTENCY_KEY_PREFIX + idempotency_key
        if self._redis.get(key) == signal_id:
            self._redis.delete(key)

    def allow(self, client_id: str, now: float | None = None) -> int:
        """0 if the request is within the per-minute budget, else seconds to wait."""
        now = time.time() if now is None else now
        window = int(now // 60)
        key = f"{RATE_LIMIT_PREFIX}{client_id}:{window}"
        pipe = self._redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, 61)
        count = int(pipe.execute()[0])
        return 0 if count <= self._rate else max(1, int(60 - now % 60))


class GatewayMarketView:
    """Adapts :class:`ExchangeGateway` to the engine's :class:`MarketView`."""

    def __init__(self, gateway: ExchangeGateway, settings: Settings) -> None:
        self._gw = gateway
        self._kline_ttl = settings.phoenix_95.cache_duration

    def closes(self, symbol: str) -> Sequence[float]:
        rows = self._gw.ohlcv(symbol, KLINE_TIMEFRAME, KLINE_LIMIT, self._kline_ttl)
        return [float(r[4]) for r in rows]

    def last_price(self, symbol: str) -> Decimal:
        return self._gw.last_price(symbol)[0]

    def equity(self) -> Decimal:
        # fresh, not cached: a size from a stale balance would overshoot risk's cap
        return self._gw.equity(ttl=0.0)[0]

    def tick_size(self, symbol: str) -> Decimal:
        return self._gw.tick_size(symbol)

    def amount_to_precision(self, symbol: str, quantity: Decimal) -> Decimal:
        return self._gw.amount_to_precision(symbol, quantity)


class Gate(DependencyProvider):
    def start(self) -> None:
        settings = get_settings()
        self.gate = IntakeGate(make_redis(settings), settings.security.rate_limit_per_minute)

    def get_dependency(self, worker_ctx: Any) -> IntakeGate:
        return self.gate


class Engine(DependencyProvider):
    def setup(self) -> None:
        settings = get_settings()
        self.engine = BrainEngine(
            settings, GatewayMarketView(ExchangeGateway(settings, name="brain"), settings)
        )

    def get_dependency(self, worker_ctx: Any) -> BrainEngine:
        return self.engine
