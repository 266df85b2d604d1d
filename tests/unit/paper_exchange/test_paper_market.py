"""Market simulator: determinism, candle history, aggregation, pinning, stream records."""

from __future__ import annotations

from decimal import Decimal

import pytest

from nameko_services.paper_exchange.market import (
    HISTORY_MINUTES,
    MINUTE_MS,
    SYMBOLS,
    Market,
    quantise,
)

T0 = 1_795_473_300_000 - 1_795_473_300_000 % MINUTE_MS + 10_000  # 10 s into a minute


@pytest.fixture
def market() -> Market:
    return Market(seed=95, volatility_annual=0.6, tick_interval_ms=500, now_ms=T0)


def test_same_seed_same_path(market: Market) -> None:
    other = Market(seed=95, volatility_annual=0.6, tick_interval_ms=500, now_ms=T0)
    assert market.candles_1m("BTCUSDT") == other.candles_1m("BTCUSDT")
    assert [t.price for t in market.step(T0 + 500)] == [t.price for t in other.step(T0 + 500)]
    third = Market(seed=96, volatility_annual=0.6, tick_interval_ms=500, now_ms=T0)
    assert third.candles_1m("BTCUSDT") != market.candles_1m("BTCUSDT")


def test_history_is_continuous_and_starts_live_at_start_price(market: Market) -> None:
    for symbol, spec in SYMBOLS.items():
        candles = market.candles_1m(symbol)
        assert len(candles) == HISTORY_MINUTES + 1
        assert candles[-1].open_time == T0 - T0 % MINUTE_MS
        assert market.price(symbol) == quantise(spec.start_price, spec.tick_size)
        for prev, cur in zip(candles, candles[1:], strict=False):
            assert cur.open_time - prev.open_time == MINUTE_MS
            assert cur.open == pytest.approx(prev.close)
            assert cur.low <= min(cur.open, cur.close) <= max(cur.open, cur.close) <= cur.high


def test_klines_aggregate_and_window(market: Market) -> None:
    ones = market.candles_1m("ETHUSDT")
    fives = market.klines("ETHUSDT", "5m", 1000, None, None)
    assert all(k.open_time % (5 * MINUTE_MS) == 0 for k in fives)
    last = fives[-1]
    members = [c for c in ones if last.open_time <= c.open_time < last.open_time + 5 * MINUTE_MS]
    assert last.high == max(c.high for c in members) and last.close == members[-1].close
    assert last.volume == pytest.approx(sum(c.volume for c in members))
    start = ones[100].open_time
    window = market.klines("ETHUSDT", "1m", 3, start, None)
    assert [c.open_time for c in window] == [start, start + MINUTE_MS, start + 2 * MINUTE_MS]
    ended = market.klines("ETHUSDT", "1m", 2, None, start)
    assert [c.open_time for c in ended] == [start - MINUTE_MS, start]


def test_step_moves_prices_and_rolls_candles(market: Market) -> None:
    before = market.price("BTCUSDT")
    ticks = market.step(T0 + 500)
    assert {t.symbol for t in ticks} == set(SYMBOLS)
    assert all(t.closed is None for t in ticks)
    assert market.price("BTCUSDT") != before
    live_open = T0 - T0 % MINUTE_MS
    ticks = market.step(live_open + 3 * MINUTE_MS + 1)  # skipped two silent minutes
    closed = [t.closed for t in ticks if t.closed is not None]
    assert len(closed) == len(SYMBOLS) and closed[0].open_time == live_open
    candles = market.candles_1m("BTCUSDT")
    assert [c.open_time for c in candles[-4:]] == [live_open + i * MINUTE_MS for i in range(4)]


def test_pin_and_hold(market: Market) -> None:
    market.pin("DOGEUSDT", Decimal("0.1234567"), hold=True)
    assert market.price("DOGEUSDT") == Decimal("0.123460")
    market.step(T0 + 500)
    market.step(T0 + 1000)
    assert market.price("DOGEUSDT") == Decimal("0.123460") and market.is_held("DOGEUSDT")
    assert market.candles_1m("DOGEUSDT")[-1].high >= 0.12346
    market.pin("BTCUSDT", Decimal("50000"), hold=False)
    for i in range(20):  # released: the walk continues from the pinned price
        market.step(T0 + 1500 + 500 * i)
    assert market.price("BTCUSDT") != Decimal("50000")
    assert abs(market.price("BTCUSDT") - 50000) < 500


