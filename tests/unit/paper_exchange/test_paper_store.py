"""Write-through persistence: a new engine on the same file carries on where the old stopped."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nameko_services.paper_exchange.engine import MatchingEngine
from nameko_services.paper_exchange.market import Market
from nameko_services.paper_exchange.models import AlgoOrder, ApiError, Order, Trade
from nameko_services.paper_exchange.store import PaperStore, decode, encode

D = Decimal
FEE = D("0.0005")


@pytest.fixture(scope="module")
def market() -> Market:
    return Market(seed=95, volatility_annual=0.6, tick_interval_ms=500)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "paper.db"


def engine_on(market: Market, path: Path) -> MatchingEngine:
    market.pin("BTCUSDT", D(60000), hold=True)
    return MatchingEngine(market, D(10000), FEE, store=PaperStore(path))


def reopen(engine: MatchingEngine, market: Market, path: Path) -> MatchingEngine:
    assert engine.store is not None
    engine.store.close()
    return MatchingEngine(market, D(10000), FEE, store=PaperStore(path))


def test_new_file_starts_a_fresh_account(market: Market, path: Path) -> None:
    engine = engine_on(market, path)
    again = reopen(engine, market, path)
    assert again.wallet == 10000 and again.trades == [] and again.leverage["BTCUSDT"] == 20


def test_position_algos_settings_trades_and_ids_survive_reopen(market: Market,
                                                               path: Path) -> None:
    engine = engine_on(market, path)
    engine.set_margin_type("BTCUSDT", "ISOLATED")
    engine.set_leverage("BTCUSDT", 10)
    entry = engine.place_market("BTCUSDT", "BUY", D("0.01"), False, "entry-1")
    sl = engine.place_algo("BTCUSDT", "SELL", "STOP_MARKET", D("0.01"), D(58800), True, False,
                           "sl-1", "MARK_PRICE")
    engine.place_algo("BTCUSDT", "SELL", "TAKE_PROFIT_MARKET", D("0.01"), D(61200), True,
                      False, "tp-1", "MARK_PRICE")
    engine.cancel_algo(sl.algo_id, None)

    again = reopen(engine, market, path)

    assert again.wallet == engine.wallet and again.available() == engine.available()
    assert again.positions["BTCUSDT"] == engine.positions["BTCUSDT"]
    assert again.leverage["BTCUSDT"] == 10 and again.margin_type["BTCUSDT"] == "ISOLATED"
    assert again.orders == engine.orders and again.algos == engine.algos
    assert again.trades == engine.trades
    assert [a.client_algo_id for a in again.open_algos("BTCUSDT")] == ["tp-1"]
    assert again.find_order("BTCUSDT", None, "entry-1").order_id == entry.order_id
    with pytest.raises(ApiError) as dup:
        again.place_market("BTCUSDT", "BUY", D("0.01"), False, "entry-1")
    assert dup.value.code == -4116
    later = again.place_market("BTCUSDT", "BUY", D("0.01"), False, None)
    assert later.order_id > max(engine.orders) and later.order_id > max(engine.algos)


def test_trigger_and_liquidation_are_persisted(market: Market, path: Path) -> None:
    engine = engine_on(market, path)
    engine.place_market("BTCUSDT", "BUY", D("0.01"), False, None)
    tp = engine.place_algo("BTCUSDT", "SELL", "TAKE_PROFIT_MARKET", D("0.01"), D(61200), True,
                           False, "tp-2", "MARK_PRICE")
    engine.on_mark("BTCUSDT", market.pin("BTCUSDT", D(61300)).mark_price)
    engine.place_market("ETHUSDT", "SELL", D("1"), False, None)
    engine.on_mark("ETHUSDT", market.pin("ETHUSDT", D(4000), hold=True).mark_price)

    again = reopen(engine, market, path)

    assert again.algos[tp.algo_id].status == "FINISHED"
    assert again.positions["BTCUSDT"].amount == 0 and again.positions["ETHUSDT"].amount == 0
    assert again.trades[-1].liquidation and again.wallet == engine.wallet
    market.pin("ETHUSDT", D(3000), hold=True)


def test_one_transaction_per_order_event(market: Market, path: Path) -> None:
    engine = engine_on(market, path)
    assert engine.store is not None
    before = engine.store.writes
    engine.place_market("BTCUSDT", "BUY", D("0.01"), False, None)
    engine.place_algo("BTCUSDT", "SELL", "TAKE_PROFIT_MARKET", D("0.01"), D(61200), True,
                      False, None, "MARK_PRICE")
    engine.on_mark("BTCUSDT", market.pin("BTCUSDT", D(61300)).mark_price)  # trigger + fill
    engine.on_mark("BTCUSDT", market.pin("BTCUSDT", D(61400)).mark_price)  # nothing changes
    with pytest.raises(ApiError):
        engine.place_market("BTCUSDT", "BUY", D("0.001"), False, None)  # rejected: no write
    assert engine.store.writes - before == 3
    market.pin("BTCUSDT", D(60000), hold=True)


def test_reset_empties_the_file(market: Market, path: Path) -> None:
    engine = engine_on(market, path)
    engine.place_market("BTCUSDT", "BUY", D("0.01"), False, "before-reset")
    engine.set_leverage("BTCUSDT", 5)
    engine.reset()

    again = reopen(engine, market, path)

    assert again.wallet == 10000 and again.orders == {} and again.trades == []
    assert again.positions["BTCUSDT"].amount == 0 and again.leverage["BTCUSDT"] == 20
    again.place_market("BTCUSDT", "BUY", D("0.01"), False, "before-reset")  # id is free again


decimals = st.decimals(min_value=D("-1e9"), max_value=D("1e9"), places=8,
                       allow_nan=False, allow_infinity=False)


@settings(max_examples=50)
@given(price=decimals, qty=decimals, fee=decimals, pnl=decimals,
       time=st.integers(min_value=0, max_value=2**53))
def test_records_round_trip_exactly(price: Decimal, qty: Decimal, fee: Decimal, pnl: Decimal,
                                    time: int) -> None:
    trade = Trade(7, 3, "BTCUSDT", "SELL", price, qty, fee, pnl, time, liquidation=True)
    order = Order(3, "c-1", "BTCUSDT", "SELL", "MARKET", qty, True, time, "FILLED", qty, price,
                  price * qty, time, close_position=True)
    algo = AlgoOrder(9, "a-1", "BTCUSDT", "SELL", "STOP_MARKET", qty, price, True, False,
                     "MARK_PRICE", time, actual_order_id=None, actual_price=pnl)
    assert decode(Trade, encode(trade)) == trade
    assert decode(Order, encode(order)) == order
    assert decode(AlgoOrder, encode(algo)) == algo
