"""Reconciliation against the real paper exchange: crashes, bracket fills, liquidation,
foreign positions and missing stops end with the book and the exchange in agreement."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import ccxt
import pytest

from nameko_services.execute.engine import ExecutionEngine
from nameko_services.execute.reconcile import Reconciler
from tests.integration.conftest import (
    CCXT_SYMBOL,
    SYMBOL,
    intent,
    pin_price,
    subclassed_client,
)

pytestmark = pytest.mark.integration


class Crash(BaseException):
    """The process dies: nothing after this line runs (not an Exception, never caught)."""


class _DiesBeforeBrackets(ccxt.binanceusdm):
    def create_order(self, symbol, type, side, amount, price=None, params=None):
        if type in ("STOP_MARKET", "TAKE_PROFIT_MARKET"):
            raise Crash()
        return super().create_order(symbol, type, side, amount, price, params or {})


def _algo(engine: ExecutionEngine) -> dict[str, dict[str, Any]]:
    return {o["info"]["orderType"]: o for o in engine.gw.client.fetch_open_orders(
        CCXT_SYMBOL, params={"trigger": True})}


def _entries(engine: ExecutionEngine) -> int:
    return len([t for t in engine.gw.client.fetch_my_trades(CCXT_SYMBOL) if t["side"] == "buy"])


def test_crash_between_entry_and_brackets_is_armed_on_restart_without_second_entry(
        engine, make_engine):
    it = intent()
    dying = make_engine(subclassed_client(engine.gw.client, _DiesBeforeBrackets))
    with pytest.raises(Crash):
        dying.open(it)
    assert _algo(engine) == {}  # unprotected position on the exchange

    restarted = make_engine()
    corrections = Reconciler(restarted).run()
    redelivered = restarted.open(it)  # the unacked message comes back too

    assert [c.kind for c in corrections] == ["adopted", "rearmed", "rearmed"]
    assert corrections[0].signal_id == it.signal_id  # recognised as ours, not foreign
    assert redelivered.status in ("duplicate", "opened")
    assert _entries(engine) == 1
    algo = _algo(engine)
    assert algo["STOP_MARKET"]["triggerPrice"] == 58800.0
    assert algo["TAKE_PROFIT_MARKET"]["triggerPrice"] == 61200.0


def test_price_through_the_stop_books_the_loss_and_cancels_the_take_profit(engine, exec_paper):
    engine.open(intent())
    pin_price(exec_paper, 58700)  # the mark walks through the 58,800 stop

    [booked] = Reconciler(engine).run()

    assert (booked.kind, booked.details["reason"]) == ("booked_close", "stop_loss")
    assert Decimal(booked.details["realized_pnl"]) < Decimal("-12")  # -12 USDT + fees
    assert _algo(engine) == {}
    row = engine.store.trades(1)[0]
    assert (row.status, row.close_reason) == ("closed", "stop_loss")
    assert row.fees is not None and row.fees > 0


def test_take_profit_fill_books_the_gain(engine, exec_paper):
    engine.open(intent())
    pin_price(exec_paper, 61300)

    [booked] = Reconciler(engine).run()

    assert booked.details["reason"] == "take_profit"
    assert Decimal(booked.details["realized_pnl"]) > Decimal("11")
    assert _algo(engine) == {}


def test_liquidation_is_booked_as_liquidated(engine, exec_paper):
    engine.open(intent())
    for order in engine.gw.client.fetch_open_orders(CCXT_SYMBOL, params={"trigger": True}):
        engine.gw.client.cancel_order(order["id"], CCXT_SYMBOL, {"trigger": True})
    pin_price(exec_paper, 57000)  # below the 57,228.92 liquidation price

    [booked] = Reconciler(engine).run()

    assert booked.details["reason"] == "liquidation"
    assert booked.level == "critical"
    assert Decimal(booked.details["realized_pnl"]) <= Decimal("-27")  # most of 30 margin


def test_unknown_position_is_adopted_and_protected(engine):
    engine.gw.client.set_leverage(20, CCXT_SYMBOL)
    engine.gw.client.create_order(CCXT_SYMBOL, "market", "sell", 0.01)  # opened by hand

    corrections = Reconciler(engine).run()

    assert [c.kind for c in corrections] == ["adopted", "rearmed", "rearmed"]
    assert corrections[0].signal_id.startswith("adopted-BTCUSDT")
    algo = _algo(engine)
    assert algo["STOP_MARKET"]["triggerPrice"] == 61200.0  # short: stop above
    assert algo["TAKE_PROFIT_MARKET"]["triggerPrice"] == 58800.0


def test_missing_stop_loss_is_rearmed(engine):
    engine.open(intent())
    stop = _algo(engine)["STOP_MARKET"]
    engine.gw.client.cancel_order(stop["id"], CCXT_SYMBOL, {"trigger": True})

    [rearmed] = Reconciler(engine).run()

    assert (rearmed.kind, rearmed.details["kind"]) == ("rearmed", "stop_loss")
    assert _algo(engine)["STOP_MARKET"]["triggerPrice"] == 58800.0


def test_stop_that_can_no_longer_be_placed_closes_at_market(engine, exec_paper):
    engine.open(intent())
    stop = _algo(engine)["STOP_MARKET"]
    engine.gw.client.cancel_order(stop["id"], CCXT_SYMBOL, {"trigger": True})
    pin_price(exec_paper, 58500)  # below the stop, above liquidation

    [closed] = Reconciler(engine).run()

    assert closed.kind == "emergency_close" and closed.level == "critical"
    assert engine.gw.positions() == []
    assert _algo(engine) == {}
    assert engine.store.trades(1)[0].status == "closed"


def test_nothing_to_do_when_book_and_exchange_agree(engine):
    engine.open(intent())

    assert Reconciler(engine).run() == []
    assert Reconciler(engine).run_symbol(SYMBOL) == []
