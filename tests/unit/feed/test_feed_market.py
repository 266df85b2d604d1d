from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
import redis

from nameko_services.feed.market import CandleBook, MarketBook
from nameko_services.feed.metrics import FeedMetrics
from nameko_services.feed.sink import RecordSink
from shared.names import REC_KLINE, REC_TICK
from shared.records import Record
from shared.settings import Settings
from shared.state import StaleState, StateReader, StateWriter, now_ms
from tests.unit.feed.payloads import BOOK, MARK, MINI, kline

T0 = 1_700_000_040_000  # a minute boundary


def row(open_ms: int, close: float) -> list[float]:
    return [float(open_ms), 100.0, 110.0, 90.0, close, 5.0]


# --- CandleBook (pure) ---


def test_a_closed_kline_is_reported_once_even_when_the_next_candle_follows() -> None:
    book = CandleBook(limit=10)

    first = book.update(row(T0, 101), is_closed=False)
    closed = book.update(row(T0, 102), is_closed=True)
    after = book.update(row(T0 + 60_000, 103), is_closed=False)

    assert first == [] and closed == [row(T0, 102)] and after == []
    assert book.closed == [row(T0, 102)] and book.live == row(T0 + 60_000, 103)


def test_a_missed_close_flag_is_inferred_from_the_next_candle() -> None:
    book = CandleBook(limit=10)
    book.update(row(T0, 101), is_closed=False)

    newly = book.update(row(T0 + 60_000, 103), is_closed=False)

    assert newly == [row(T0, 101)]


def test_closed_candles_are_capped_at_the_limit() -> None:
    book = CandleBook(limit=3)

    for i in range(5):
        book.update(row(T0 + i * 60_000, 100 + i), is_closed=True)

    assert [r[0] for r in book.closed] == [T0 + i * 60_000 for i in (2, 3, 4)]


def test_seed_after_a_reconnect_reports_the_candles_closed_during_the_gap() -> None:
    book = CandleBook(limit=10)
    book.update(row(T0, 101), is_closed=True)
    rest = [row(T0 + i * 60_000, 100 + i) for i in range(4)]  # the last one still forming

    missed = book.seed(rest, now=T0 + 3 * 60_000 + 5_000, tf_ms=60_000)

    assert missed == [row(T0 + 60_000, 101), row(T0 + 120_000, 102)]
    assert [r[0] for r in book.closed] == [T0, T0 + 60_000, T0 + 120_000]
    assert book.live == row(T0 + 180_000, 103)


def test_the_first_seed_is_history_not_new_candles() -> None:
    book = CandleBook(limit=10)

    missed = book.seed([row(T0, 1), row(T0 + 60_000, 2)], now=T0 + 90_000, tf_ms=60_000)

    assert missed == [] and book.closed == [row(T0, 1)] and book.live == row(T0 + 60_000, 2)


# --- MarketBook with real Redis ---


@pytest.fixture
def market(settings: Settings, rds: redis.Redis) -> tuple[MarketBook, str]:
    stream = f"test:feed:market:{uuid.uuid4().hex[:8]}"
    metrics = FeedMetrics()
    book = MarketBook(["BTCUSDT"], ("1m", "5m"), 50, StateWriter(rds),
                      RecordSink(rds, 1000, metrics), metrics, stream)
    yield book, stream
    rds.delete(stream)


def records(rds: redis.Redis, stream: str) -> list[Record]:
    return [Record.from_stream_fields(f) for _, f in rds.xrange(stream)]


def test_a_mark_price_stores_a_fresh_price_and_appends_a_tick(
        market: tuple[MarketBook, str], rds: redis.Redis, settings: Settings) -> None:
    book, stream = market

    for ev in (BOOK, MINI, MARK):
        book.handle(ev)
    book.flush()

    price = StateReader(rds, settings).price("BTCUSDT")
    assert (price.mark, price.last, price.bid, price.ask) == \
        (Decimal("11794.15"), Decimal("11794.30"), Decimal("11794.10"), Decimal("11794.20"))
    assert price.event_ms == max(BOOK["E"], MINI["E"], MARK["E"])  # the newest quote's
    assert now_ms() - price.updated_ms < 5_000
    (tick,) = records(rds, stream)
    assert tick.type == REC_TICK
    assert tick.data == {"symbol": "BTCUSDT", "price": "11794.30",
                         "mark_price": "11794.15000000", "bid": "11794.10",
                         "ask": "11794.20", "event_ms": MARK["E"]}


def test_a_price_not_refreshed_within_the_staleness_limit_is_stale(
        market: tuple[MarketBook, str], rds: redis.Redis, settings: Settings) -> None:
    book, _ = market
    book.handle(MARK)
    book.flush()
    reader = StateReader(rds, settings)

    with pytest.raises(StaleState) as err:
        reader.price("BTCUSDT", now=now_ms() + int(settings.feed.max_staleness_seconds * 1000)
                     + 1_000)

    assert err.value.reason == "market_data_stale"


def test_closed_klines_are_stored_and_appended_and_forming_ones_only_stored(
        market: tuple[MarketBook, str], rds: redis.Redis, settings: Settings) -> None:
    book, stream = market

    book.handle(kline(T0, "101.5", closed=False))
    book.handle(kline(T0, "102.5", closed=True))
    book.handle(kline(T0 + 60_000, "103.5", closed=False))
    book.handle(kline(T0, "1", closed=True, interval="3m"))  # not a kept timeframe
    book.flush()

    candles = StateReader(rds, settings).candles("BTCUSDT", "1m", 10)
    assert [(c[0], c[4]) for c in candles] == [(T0, 102.5), (T0 + 60_000, 103.5)]
    recs = records(rds, stream)
    assert [r.type for r in recs] == [REC_KLINE]
    assert recs[0].data["open_time"] == T0 and recs[0].data["close"] == "102.5"


def test_events_of_other_symbols_are_ignored(market: tuple[MarketBook, str],
                                             rds: redis.Redis) -> None:
    book, stream = market

    book.handle({**MARK, "s": "XRPUSDT"})
    book.flush()

    assert rds.hgetall("phoenix95:state:prices") == {} and records(rds, stream) == []


def test_market_is_fresh_only_after_a_mark_price_and_not_after_a_drop(
        market: tuple[MarketBook, str]) -> None:
    book, _ = market
    assert not book.fresh(5_000)

    book.handle(MARK)
    fresh = book.fresh(5_000)
    book.down()

    assert fresh and not book.fresh(5_000)
