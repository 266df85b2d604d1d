"""Brain's dependencies: the intake gate (idempotency, rate limit) and the analysis engine."""

from __future__ import annotations

import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import redis
from nameko.extensions import DependencyProvider

from nameko_services.brain.engine import BrainEngine
from nameko_services.brain.model import DEFAULT_MODEL_PATH, PhoenixModel
from nameko_services.brain.track_record import TrackRecord
from shared.market import ExchangeGateway
from shared.nameko_deps import make_redis
from shared.names import IDEMPOTENCY_KEY_PREFIX, RATE_LIMIT_PREFIX, TRADING_STATE_KEY
from shared.settings import ROOT, Settings, get_settings

IDEMPOTENCY_TTL_S = 24 * 3600


class IntakeGate:
    """Shared by every brain instance through Redis, so the limits hold cluster-wide."""

    def __init__(self, client: redis.Redis, rate_per_minute: int) -> None:
        self._redis = client
        self._rate = rate_per_minute

    def trading_state(self) -> str:
        """Risk's trading state as it mirrors it in Redis; ACTIVE until risk has written it.

        A fast-fail only: risk itself still refuses every entry while not ACTIVE.
        """
        state = self._redis.get(TRADING_STATE_KEY)
        return str(state).upper() if state else "ACTIVE"

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

    def klines(self, symbol: str, timeframe: str, limit: int) -> Sequence[Sequence[float]]:
        return self._gw.ohlcv(symbol, timeframe, limit, self._kline_ttl)

    def last_price(self, symbol: str) -> Decimal:
        return self._gw.last_price(symbol)[0]

    def equity(self) -> Decimal:
        # fresh, not cached: a size from a stale balance would overshoot risk's cap
        return self._gw.equity(ttl=0.0)[0]

    def tick_size(self, symbol: str) -> Decimal:
        return self._gw.tick_size(symbol)

    def min_quantity(self, symbol: str) -> Decimal:
        return self._gw.min_quantity(symbol)

    def min_notional(self, symbol: str) -> Decimal:
        return self._gw.min_notional(symbol)

    def amount_to_precision(self, symbol: str, quantity: Decimal) -> Decimal:
        return self._gw.amount_to_precision(symbol, quantity)


def load_model(settings: Settings) -> PhoenixModel:
    """The configured model file (``phoenix_95.model_path``), else the shipped one."""
    configured = settings.phoenix_95.model_path
    if not configured:
        return PhoenixModel.load(DEFAULT_MODEL_PATH)
    path = Path(configured)
    return PhoenixModel.load(path if path.is_absolute() else ROOT / path)


class Gate(DependencyProvider):
    def start(self) -> None:
        settings = get_settings()
        self.gate = IntakeGate(make_redis(settings), settings.security.rate_limit_per_minute)

    def get_dependency(self, worker_ctx: Any) -> IntakeGate:
        return self.gate


class Engine(DependencyProvider):
    """The analysis engine: exchange market view, the fitted model, the track record."""

    def setup(self) -> None:
        settings = get_settings()
        self.engine = BrainEngine(
            settings, GatewayMarketView(ExchangeGateway(settings, name="brain"), settings),
            load_model(settings), TrackRecord.from_settings(settings),
        )

    def get_dependency(self, worker_ctx: Any) -> BrainEngine:
        return self.engine
