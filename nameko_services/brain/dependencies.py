"""Brain's dependencies: the intake gate (idempotency, rate limit) and the analysis engine
on the feed's market and account state."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import redis
from nameko.extensions import DependencyProvider

from nameko_services.brain.engine import BrainEngine
from nameko_services.brain.features import FAST_TIMEFRAME, KLINE_LIMIT, SLOW_TIMEFRAME
from nameko_services.brain.model import DEFAULT_MODEL_PATH, PhoenixModel
from nameko_services.brain.track_record import TrackRecordStore
from shared.nameko_deps import make_redis
from shared.names import (
    IDEMPOTENCY_KEY_PREFIX,
    IDEMPOTENCY_WINDOW_S,
    RATE_LIMIT_PREFIX,
    TRADING_STATE_KEY,
)
from shared.settings import ROOT, ConfigError, Settings, get_settings
from shared.state import MARKET_STALE, StaleState, StateReader, now_ms, timeframe_ms
from shared.symbol_rules import SymbolRulesReader

log = logging.getLogger(__name__)

IDEMPOTENCY_TTL_S = IDEMPOTENCY_WINDOW_S  # one window for brain's dedup and execute's ids
# A claim is "pending" until its signal is on the queue: a brain killed between the claim
# and the publish must not turn the sender's retry into a "duplicate" of a signal nobody
# queued. A pending claim answers the retry 503 (in flight) and lapses after this long.
PENDING_TTL_S = 30
PENDING = "pending:"
RATE_WINDOW_TTL_S = 61

# The webhook's whole admission in one Redis round trip, atomically: the per-minute
# rate limit, risk's trading state (entries only) and the idempotency claim, in that
# order, so a refused alert never holds a claim.
# KEYS: rate counter, trading state, idempotency key.
# ARGV: limit, rate ttl, entry (1/0), signal id, idempotency ttl.
_ADMIT_LUA = """
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
if n > tonumber(ARGV[1]) then return {'rate_limited', ''} end
if ARGV[3] == '1' then
  local s = redis.call('GET', KEYS[2])
  if s and string.upper(s) ~= 'ACTIVE' then return {'halted', string.upper(s)} end
end
if redis.call('SET', KEYS[3], ARGV[4], 'NX', 'EX', ARGV[5]) then return {'ok', ''} end
return {'duplicate', redis.call('GET', KEYS[3]) or ''}
"""

Verdict = Literal["ok", "rate_limited", "halted", "duplicate", "in_flight"]


@dataclass(frozen=True, slots=True)
class Admission:
    """``ok`` (claimed, pending until :meth:`IntakeGate.confirm`), ``rate_limited``
    (``wait`` s), ``halted`` (``detail`` = the trading state), ``duplicate`` (``detail`` =
    the earlier signal id, queued) or ``in_flight`` (the earlier one is not queued yet)."""

    verdict: Verdict
    detail: str = ""
    wait: int = 0


class IntakeGate:
    """Shared by every brain instance through Redis, so the limits hold cluster-wide."""

    def __init__(self, client: redis.Redis, rate_per_minute: int) -> None:
        self._redis = client
        self._rate = rate_per_minute
        self._admit = client.register_script(_ADMIT_LUA)

    def admit(self, client_id: str, idempotency_key: str, signal_id: str, *, entry: bool,
              now: float | None = None) -> Admission:
        """Rate limit, trading state (when ``entry``) and idempotency claim at once."""
        now = time.time() if now is None else now
        keys = [self._rate_key(client_id, now), TRADING_STATE_KEY,
                IDEMPOTENCY_KEY_PREFIX + idempotency_key]
        verdict, detail = self._admit(keys=keys, args=[
            self._rate, RATE_WINDOW_TTL_S, 1 if entry else 0, PENDING + signal_id,
            PENDING_TTL_S])
        if verdict == "rate_limited":
            return Admission("rate_limited", wait=self._wait(now))
        if verdict == "duplicate":
            return self._earlier(str(detail))
        if verdict == "halted":
            return Admission(verdict, str(detail))
        return Admission("ok")

    @staticmethod
    def _earlier(value: str) -> Admission:
        if value.startswith(PENDING):
            return Admission("in_flight", value[len(PENDING):], wait=PENDING_TTL_S)
        return Admission("duplicate", value)

    def confirm(self, idempotency_key: str, signal_id: str) -> None:
        """The signal is on the queue: its claim now holds for the whole window."""
        self._redis.set(IDEMPOTENCY_KEY_PREFIX + idempotency_key, signal_id,
                        ex=IDEMPOTENCY_TTL_S)

    @staticmethod
    def _rate_key(client_id: str, now: float) -> str:
        return f"{RATE_LIMIT_PREFIX}{client_id}:{int(now // 60)}"

    @staticmethod
    def _wait(now: float) -> int:
        return max(1, int(60 - now % 60))

    def trading_state(self) -> str:
        """Risk's trading state as it mirrors it in Redis; ACTIVE until risk has written it.

        A fast-fail only: risk itself still refuses every entry while not ACTIVE.
        """
        state = self._redis.get(TRADING_STATE_KEY)
        return str(state).upper() if state else "ACTIVE"

    def claim(self, idempotency_key: str, signal_id: str) -> Admission:
        """Claim the key for ``signal_id`` (pending); ``duplicate``/``in_flight`` with the
        earlier signal id if already claimed."""
        key = IDEMPOTENCY_KEY_PREFIX + idempotency_key
        if self._redis.set(key, PENDING + signal_id, nx=True, ex=PENDING_TTL_S):
            return Admission("ok")
        earlier = self._redis.get(key)
        return self._earlier(str(earlier)) if earlier is not None else Admission("ok")

    def release(self, idempotency_key: str, signal_id: str) -> None:
        """Undo a claim whose signal could not be queued, so TradingView's retry goes through."""
        key = IDEMPOTENCY_KEY_PREFIX + idempotency_key
        if self._redis.get(key) in (signal_id, PENDING + signal_id):
            self._redis.delete(key)

    def allow(self, client_id: str, now: float | None = None) -> int:
        """0 if the request is within the per-minute budget, else seconds to wait."""
        now = time.time() if now is None else now
        key = self._rate_key(client_id, now)
        pipe = self._redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, RATE_WINDOW_TTL_S)
        count = int(pipe.execute()[0])
        return 0 if count <= self._rate else self._wait(now)


class StateMarketView:
    """The engine's :class:`MarketView` on the feed's state in Redis.

    Candles, price and equity are read from the state (no exchange request per alert) and
    raise :class:`StaleState` when the streams behind them are down; the symbol filters are
    the rules the feed publishes (so brain neither loads markets nor imports ccxt)."""

    def __init__(self, state: StateReader, rules: SymbolRulesReader) -> None:
        self._state = state
        self._rules = rules
        self._max_age_ms = state.max_age_ms

    def klines(self, symbol: str, timeframe: str, limit: int) -> Sequence[Sequence[float]]:
        self._state.price(symbol)  # the market stream is up (raises when it is not)
        rows = self._state.candles(symbol, timeframe, limit)
        # the newest candle must be the one forming now: candles that stopped at an
        # older bar would score the alert on a market that has since moved
        period_ms = timeframe_ms(timeframe)
        behind = now_ms() - (int(rows[-1][0]) + period_ms)
        if behind > self._max_age_ms:
            raise StaleState(MARKET_STALE, f"{symbol} {timeframe}: candles end {behind} ms ago")
        return rows

    def last_price(self, symbol: str) -> Decimal:
        return self._state.price(symbol).reference

    def equity(self) -> Decimal:
        # marked like risk marks it, so a size at the cap is not refused as over it
        return self._state.account().equity_at(self._state.prices())

    def tick_size(self, symbol: str) -> Decimal:
        return self._rules.get(symbol).tick_size

    def min_quantity(self, symbol: str) -> Decimal:
        return self._rules.get(symbol).min_quantity

    def min_notional(self, symbol: str) -> Decimal:
        return self._rules.get(symbol).min_notional

    def amount_to_precision(self, symbol: str, quantity: Decimal) -> Decimal:
        return self._rules.get(symbol).floor_quantity(quantity)


def check_feed_covers_features(settings: Settings) -> None:
    """The feed must keep the timeframes and the history the features read."""
    missing = sorted({FAST_TIMEFRAME, SLOW_TIMEFRAME} - set(settings.feed.timeframes))
    if missing:
        raise ConfigError(f"feed.timeframes must include {', '.join(missing)} "
                          "(brain's features read them)")
    if settings.feed.candle_limit + 1 < KLINE_LIMIT:
        raise ConfigError(f"feed.candle_limit={settings.feed.candle_limit} is below the "
                          f"{KLINE_LIMIT - 1} closed candles brain's features read")


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


class BrainEngineProvider(DependencyProvider):
    """The analysis engine: the market view on the feed's state, the fitted model, the
    track record."""

    def setup(self) -> None:
        settings = get_settings()
        check_feed_covers_features(settings)
        client = make_redis(settings)
        self.engine = BrainEngine(
            settings, StateMarketView(StateReader(client, settings), SymbolRulesReader(client)),
            load_model(settings), TrackRecordStore.from_settings(settings),
        )

    def get_dependency(self, worker_ctx: Any) -> BrainEngine:
        return self.engine
