"""Fakes at the brain's boundaries (market view, track record) for tests/unit/brain."""

from __future__ import annotations

import math
from decimal import ROUND_DOWN, Decimal

from nameko_services.brain.features import FAST_MS, FEATURE_NAMES, SLOW_MS, Candles
from nameko_services.brain.model import PhoenixModel
from nameko_services.brain.track_record import ClosedTrade, TrackRecord
from nameko_services.brain.training import synthetic_market
from shared.state import ACCOUNT_STALE, MARKET_STALE, StaleState


def rows(c: Candles) -> list[list[float]]:
    return [[float(c.open_time[i]), float(c.open[i]), float(c.high[i]), float(c.low[i]),
             float(c.close[i]), float(c.volume[i])] for i in range(len(c))]


class FakeMarket:
    """Klines of a seeded synthetic market; price, equity and BTCUSDT-like filters.

    ``stale_market`` / ``stale_account``: the feed's state behind klines and price / behind
    equity is stale, so those reads raise :class:`StaleState` as the state view does."""

    def __init__(self, candles: Candles | None = None, price: str = "60000",
                 equity: str = "10000", step: str = "0.001", min_qty: str = "0.001",
                 min_notional: str = "100", *, stale_market: bool = False,
                 stale_account: bool = False) -> None:
        self.stale_market, self.stale_account = stale_market, stale_account
        self.candles = candles if candles is not None else synthetic_market(3000, seed=3)
        self.price, self.eq = Decimal(price), Decimal(equity)
        self.step, self.min_qty, self.min_not = Decimal(step), Decimal(min_qty), Decimal(
            min_notional)
        self.kline_calls: list[tuple[str, str, int]] = []

    @property
    def now(self) -> float:
        """A clock at which every fast bar has closed (the forming one is the next)."""
        return (float(self.candles.open_time[-1]) + FAST_MS) / 1000 + 1

    def klines(self, symbol, timeframe, limit):
        self.kline_calls.append((symbol, timeframe, limit))
        if self.stale_market:
            raise StaleState(MARKET_STALE, f"{symbol}: last price 9000 ms old")
        c = self.candles if timeframe == "5m" else self.candles.resample(SLOW_MS)
        return rows(c)[-limit:]

    def last_price(self, symbol):
        if self.stale_market:
            raise StaleState(MARKET_STALE, f"{symbol}: last price 9000 ms old")
        return self.price

    def equity(self):
        if self.stale_account:
            raise StaleState(ACCOUNT_STALE, "account state 9000 ms old")
        return self.eq

    def tick_size(self, symbol):
        return Decimal("0.1")

    def min_quantity(self, symbol):
        return self.min_qty

    def min_notional(self, symbol):
        return self.min_not

    def amount_to_precision(self, symbol, quantity):
        return (quantity / self.step).to_integral_value(rounding=ROUND_DOWN) * self.step


class FakeTrack:
    def __init__(self, wins: int = 0, losses: int = 0) -> None:
        self.record = TrackRecord(wins, losses)
        self.booked: list[tuple[str, ClosedTrade]] = []

    def get(self, strategy, symbol, side):
        return self.record

    def book(self, event_id: str, trade: ClosedTrade) -> bool:
        self.booked.append((event_id, trade))
        return True


def constant_model(p: float, prior_strength: float = 20.0) -> PhoenixModel:
    """A model that ignores the market and answers ``p``: for testing gates and sizing."""
    n = len(FEATURE_NAMES)
    return PhoenixModel(version=f"constant-{p}", features=FEATURE_NAMES, mean=(0.0,) * n,
                        scale=(1.0,) * n, coef=(0.0,) * n,
                        intercept=math.log(p / (1 - p)), base_rate=p,
                        prior_strength=prior_strength)


class FakeTelemetry:
    """Records what a service would write to its streams and topics."""

    def __init__(self):
        self.records = []

    def emit(self, stream, record):
        self.records.append((stream, record))

    emit_nowait = emit

    def health(self):
        return {}
