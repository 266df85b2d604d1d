"""Replaying OHLCV candles: CSV parsing, the sub-tick walk, the stop at the end, klines."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nameko_services.paper_exchange import views
from nameko_services.paper_exchange.engine import MatchingEngine
from nameko_services.paper_exchange.market import MINUTE_MS, SYMBOLS, Market
from nameko_services.paper_exchange.models import Candle
from nameko_services.paper_exchange.replay import load_csv, parse_timestamp

SAMPLE = Path(__file__).parents[3] / "nameko_services/paper_exchange/data/btcusdt_1m_sample.csv"
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
HEADER = "timestamp,open,high,low,close,volume\n"


def write(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    path = tmp_path / "candles.csv"
    path.write_text(header + body)
    return path


def replayed(candles: list[Candle], symbol: str = "BTCUSDT") -> Market:
    return Market(seed=95, volatility_annual=0.6, tick_interval_ms=500, now_ms=T0,
                  replay={symbol: candles})


@given(st.integers(min_value=100_000_000_000, max_value=4_102_444_800_000))
def test_millisecond_and_iso_timestamps_agree(ms: int) -> None:
    whole = ms - ms % 1000
    iso = datetime.fromtimestamp(whole / 1000, tz=UTC).isoformat()
    assert parse_timestamp(str(ms)) == ms
    assert parse_timestamp(iso) == parse_timestamp(iso.replace("+00:00", "Z")) == whole
    assert parse_timestamp(iso.replace("+00:00", "")) == whole  # naive means UTC
    assert parse_timestamp(str(whole // 1000)) == whole  # epoch seconds


def test_csv_with_symbol_column_and_iso_times(tmp_path: Path) -> None:
    path = write(tmp_path, "2024-01-01T00:00:00Z,1,2,0.5,1.5,10,ethusdt\n"
                           "2024-01-01T00:01:00Z,1.5,1.6,1.4,1.45,11,ETHUSDT\n",
                 header="Timestamp,Open,High,Low,Close,Volume,Symbol\n")
    candles = load_csv(path, frozenset(SYMBOLS))
    assert list(candles) == ["ETHUSDT"]
    assert [c.open_time for c in candles["ETHUSDT"]] == [T0, T0 + MINUTE_MS]


@pytest.mark.parametrize(("body", "error"), [
    ("1704067200000,1,2,0.5,1.5\n", "missing column"),
    ("1704067200000,1,0.9,0.5,1.5,10\n", ":2: high/low"),
    ("1704067200000,1,2,0.5,1.5,10\n1704067200000,1,2,0.5,1.5,10\n", ":3: BTCUSDT timestamps"),
    ("yesterday,1,2,0.5,1.5,10\n", ":2: Invalid isoformat"),
    ("1704067200000,0,2,0,1.5,10\n", "positive"),
    ("", "no candles"),
])
def test_malformed_csv_fails_naming_the_line(tmp_path: Path, body: str, error: str) -> None:
    header = "timestamp,open,high,low,close\n" if error == "missing column" else HEADER
    with pytest.raises(ValueError, match=error):
        load_csv(write(tmp_path, body, header))


def test_replay_walks_open_extremes_close_then_stops() -> None:
    rising = Candle(T0, 100.0, 110.0, 95.0, 105.0, 8.0)
    falling = Candle(T0 + MINUTE_MS, 105.0, 106.0, 90.0, 92.0, 4.0)
    market = replayed([rising, falling])
    prices = [market.price("BTCUSDT")]
    closed = []
    for _ in range(9):
        (tick,) = [t for t in market.step(T0) if t.symbol == "BTCUSDT"]
        prices.append(tick.price)
        if tick.closed is not None:
            closed.append(tick.closed)
    assert prices == [Decimal(p) for p in
                      ("100", "95", "110", "105", "105", "106", "90", "92", "92", "92")]
    assert closed == [rising]  # the last candle stays live once the file is used up
    assert market.candles_1m("BTCUSDT") == [rising, falling]


def test_held_replay_pauses_and_resumes() -> None:
    market = replayed([Candle(T0, 100.0, 110.0, 95.0, 105.0, 8.0)])
    market.pin("BTCUSDT", Decimal(99), hold=True)
    market.step(T0)
    assert market.price("BTCUSDT") == 99
    market.pin("BTCUSDT", Decimal(99), hold=False)
    market.step(T0)
    assert market.price("BTCUSDT") == 95


def test_other_symbols_keep_their_random_walk() -> None:
    plain = Market(seed=95, volatility_annual=0.6, tick_interval_ms=500, now_ms=T0)
    market = replayed([Candle(T0, 100.0, 110.0, 95.0, 105.0, 8.0)])
    assert market.candles_1m("ETHUSDT") == plain.candles_1m("ETHUSDT")
    assert market.is_replayed("BTCUSDT") and not market.is_replayed("ETHUSDT")


def test_klines_and_ticker_serve_the_replayed_history() -> None:
    candles = load_csv(SAMPLE)["BTCUSDT"]
    market = replayed(candles)
    for _ in range(4 * 30):  # thirty candles
        market.step(T0)
    ones = views.klines(market, "BTCUSDT", "1m", 500, None, None)
    assert [k[0] for k in ones] == [c.open_time for c in candles[:31]]
    first = candles[0]
    assert [Decimal(x) for x in ones[0][1:5]] == [
        Decimal(repr(x)) for x in (first.open, first.high, first.low, first.close)]
    fives = views.klines(market, "BTCUSDT", "5m", 500, None, None)
    assert fives[0][0] == T0 and Decimal(fives[0][2]) == Decimal(repr(
        max(c.high for c in candles[:5]))).quantize(Decimal("0.1"))
    since = views.klines(market, "BTCUSDT", "1m", 3, T0 + 10 * MINUTE_MS, None)
    assert [k[0] for k in since] == [T0 + m * MINUTE_MS for m in (10, 11, 12)]
    ticker = views.ticker_24hr(market, "BTCUSDT", now=T0 + 10**10)
    assert Decimal(ticker["openPrice"]) == Decimal(repr(first.open))
    assert ticker["lastPrice"] == str(market.price("BTCUSDT"))


def test_stops_fire_on_a_replayed_wick() -> None:
    market = replayed([Candle(T0, 100.0, 101.0, 90.0, 100.5, 8.0)], symbol="ADAUSDT")
    engine = MatchingEngine(market, Decimal(10000), Decimal("0.0005"))
    engine.place_market("ADAUSDT", "BUY", Decimal(100), False, None)
    stop = engine.place_algo("ADAUSDT", "SELL", "STOP_MARKET", Decimal(100), Decimal(95),
                             True, False, None, "MARK_PRICE")
    for tick in market.step(T0):  # open -> low (90): through the stop
        engine.on_mark(tick.symbol, tick.mark_price)
    assert engine.algos[stop.algo_id].status == "FINISHED"
    assert engine.positions["ADAUSDT"].amount == 0
