"""Reconciliation against the real paper exchange: crashes, bracket fills, liquidation,
foreign positions and missing stops end with the book and the exchange in agreement."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import ccxt
import pytest

from nameko_services.execute import events
from nameko_services.execute.engine import ExecutionEngine, intent_ids
from nameko_services.execute.reconcile import Reconciler
from nameko_services.execute.store import LegResult, OrderRecord
from shared.models import ExchangeOrderRecord
from shared.names import REC_EXCHANGE_ORDER, REC_EXCHANGE_POSITION
from shared.records import Record
from shared.state import Account, Balance, Order, Price, now_ms
from tests.integration.conftest import (
    CCXT_SYMBOL,
    SYMBOL,
    exchange_positions,
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
    assert exchange_positions(engine) == []
    assert _algo(engine) == {}
    assert engine.store.trades(1)[0].status == "closed"


def test_nothing_to_do_when_book_and_exchange_agree(engine):
    engine.open(intent())

    assert Reconciler(engine).run() == []
    assert Reconciler(engine).run_symbol(SYMBOL) == []


# --- event-driven reconciliation and the sweep over the feed's state ---


class _Counting(ccxt.binanceusdm):
    requests: list[tuple[str, str]]

    def fetch(self, url, method="GET", headers=None, body=None):
        self.requests.append((method, urlsplit(url).path))
        return super().fetch(url, method, headers, body)


class FeedState:
    """The feed's account state as execute reads it (shared.state.StateReader's side)."""

    max_age_ms = 5_000

    def __init__(self) -> None:
        self.current = Account(balance=Balance())

    def account(self, *, now: int | None = None, fresh: bool = True) -> Account:
        return self.current

    def prices(self) -> dict[str, Price]:
        return {}

    def mirror(self, engine: ExecutionEngine, *, age_ms: int = 0) -> None:
        """What the feed holds after the user-data stream told it everything."""
        self.current = Account(balance=Balance(),
                               positions=tuple(engine.gw.open_positions()),
                               orders=tuple(engine.gw.open_orders(None)),
                               as_of_ms=now_ms() - age_ms)


def _order_event(order: Order, status: str) -> Record:
    """An ALGO_UPDATE record as the feed appends it to trade:stream (through the wire)."""
    data = ExchangeOrderRecord(
        event="ALGO_UPDATE", order=order.model_copy(update={"status": status}).model_dump(
            mode="json"), execution="", trade_id="", last_fill_price="",
        last_fill_quantity="", commission="", commission_asset="", realized_pnl="",
        event_ms=now_ms())
    fields = Record(REC_EXCHANGE_ORDER, dict(data)).stream_fields()
    assert events.wanted(fields)
    return Record.from_stream_fields(fields)


def _our_algo(engine: ExecutionEngine, kind: str) -> Order:
    row = engine.store.order_for(engine.store.open_positions()[0].signal_id, kind)
    assert row is not None
    [order] = [o for o in engine.gw.open_orders(SYMBOL) if o.client_id == row.client_order_id]
    return order


def test_algo_new_event_marks_our_bracket_armed_and_a_late_answer_does_not_undo_it(engine):
    engine.open(intent())
    stop = _our_algo(engine, "stop_loss")

    symbol = events.ExchangeEvents(engine.store).handle(_order_event(stop, "NEW"))
    row = engine.store.order(stop.client_id)
    late_answer = LegResult(OrderRecord(row.client_order_id, row.signal_id, SYMBOL, row.kind,
                                        row.side, row.order_type, row.quantity,
                                        row.trigger_price), stop.order_id)
    engine.store.book([late_answer])  # the REST answer, overtaken by the event

    assert symbol is None
    assert engine.store.order(stop.client_id).status == "armed"


def test_armed_event_that_overtakes_the_booking_is_kept(engine):
    it = intent()
    ids = intent_ids(it)
    engine.store.claim(OrderRecord(ids["entry"], it.signal_id, SYMBOL, "entry", "BUY",
                                   "MARKET", it.quantity))  # entry sent, legs not booked yet
    stop = Order(symbol=SYMBOL, kind="algo", order_id="77", client_id=ids["stop_loss"],
                 type="STOP_MARKET", side="SELL", status="NEW", quantity=it.quantity,
                 trigger_price=Decimal(58800), reduce_only=True)

    events.ExchangeEvents(engine.store).handle(_order_event(stop, "NEW"))
    engine.store.book([LegResult(OrderRecord(ids["stop_loss"], it.signal_id, SYMBOL,
                                             "stop_loss", "SELL", "STOP_MARKET", it.quantity,
                                             Decimal(58800)), "77")])

    row = engine.store.order(ids["stop_loss"])
    assert (row.status, row.signal_id, row.exchange_id) == ("armed", it.signal_id, "77")


def test_stop_loss_event_books_the_loss_and_cancels_the_take_profit(engine, exec_paper):
    engine.open(intent())
    stop = _our_algo(engine, "stop_loss")
    pin_price(exec_paper, 58700)  # the mark walks through the 58,800 stop

    symbol = events.ExchangeEvents(engine.store).handle(_order_event(stop, "FINISHED"))
    [booked] = Reconciler(engine).on_event(symbol)

    assert symbol == SYMBOL
    assert (booked.kind, booked.details["reason"]) == ("booked_close", "stop_loss")
    assert _algo(engine) == {}
    assert engine.store.trades(1)[0].close_reason == "stop_loss"
    # the TP's CANCELED and the flat position that follow find nothing left to do
    flat = Record(REC_EXCHANGE_POSITION, {"symbol": SYMBOL, "side": "", "quantity": "0",
                                          "entry_price": "0", "reason": "ORDER",
                                          "event_ms": now_ms()})
    assert events.ExchangeEvents(engine.store).handle(flat) is None


def test_cancelled_stop_loss_event_rearms_it(engine):
    engine.open(intent())
    stop = _our_algo(engine, "stop_loss")
    engine.gw.client.cancel_order(stop.order_id, CCXT_SYMBOL, {"trigger": True})  # by hand

    symbol = events.ExchangeEvents(engine.store).handle(_order_event(stop, "CANCELED"))
    [rearmed] = Reconciler(engine).on_event(symbol)

    assert (rearmed.kind, rearmed.details["kind"]) == ("rearmed", "stop_loss")
    assert _algo(engine)["STOP_MARKET"]["triggerPrice"] == 58800.0


def test_position_closed_elsewhere_event_books_the_close(engine, exec_paper):
    engine.open(intent())
    engine.gw.client.create_order(CCXT_SYMBOL, "market", "sell", 0.01, None,
                                  {"reduceOnly": True})  # closed by hand on the exchange
    flat = Record(REC_EXCHANGE_POSITION, {"symbol": SYMBOL, "side": "", "quantity": "0",
                                          "entry_price": "0", "reason": "ORDER",
                                          "event_ms": now_ms()})

    symbol = events.ExchangeEvents(engine.store).handle(flat)
    [booked] = Reconciler(engine).on_event(symbol)

    assert booked.kind == "booked_close"
    assert _algo(engine) == {}
    assert engine.store.open_positions() == []


def test_events_of_symbols_we_do_not_hold_reconcile_nothing(engine):
    flat = Record(REC_EXCHANGE_POSITION, {"symbol": "ETHUSDT", "side": "", "quantity": "0",
                                          "entry_price": "0", "reason": "ORDER",
                                          "event_ms": now_ms()})

    assert events.ExchangeEvents(engine.store).handle(flat) is None
    assert Reconciler(engine).on_event("ETHUSDT") == []


def _counted(engine: ExecutionEngine, make_engine, state: FeedState) -> ExecutionEngine:
    client = subclassed_client(engine.gw.client, _Counting)
    client.requests = []
    counted = make_engine(client, state)
    counted.prepare((SYMBOL,))
    counted.gw.open_positions()  # ccxt loads the leverage tiers with the first positions read
    client.requests.clear()
    return counted


def test_idle_sweep_with_matching_state_sends_no_request(engine, make_engine):
    state = FeedState()
    counted = _counted(engine, make_engine, state)
    counted.open(intent())
    state.mirror(engine)
    counted.gw.client.requests.clear()

    corrections = Reconciler(counted).sweep()
    views = counted.positions()

    assert corrections == []
    assert counted.gw.client.requests == []
    assert [(v["symbol"], v["side"], Decimal(v["quantity"])) for v in views] == [
        (SYMBOL, "LONG", Decimal("0.01"))]


def test_sweep_on_stale_state_takes_one_rest_snapshot(engine, make_engine):
    state = FeedState()
    counted = _counted(engine, make_engine, state)
    counted.open(intent())
    state.mirror(engine, age_ms=60_000)  # the feed is down
    counted.gw.client.requests.clear()

    corrections = Reconciler(counted).sweep()

    assert corrections == []
    assert sorted(counted.gw.client.requests) == [("GET", "/fapi/v1/openAlgoOrders"),
                                                  ("GET", "/fapi/v3/positionRisk")]


def test_sweep_asks_the_exchange_only_about_a_symbol_that_disagrees(engine, make_engine):
    state = FeedState()
    counted = _counted(engine, make_engine, state)
    counted.open(intent())
    stop = _our_algo(engine, "stop_loss")
    engine.gw.client.cancel_order(stop.order_id, CCXT_SYMBOL, {"trigger": True})
    state.mirror(engine)  # the feed saw the stop go
    counted.gw.client.requests.clear()

    [rearmed] = Reconciler(counted).sweep()

    assert (rearmed.kind, rearmed.details["kind"]) == ("rearmed", "stop_loss")
    assert counted.gw.client.requests == [("GET", "/fapi/v3/positionRisk"),
                                          ("GET", "/fapi/v1/openAlgoOrders"),
                                          ("POST", "/fapi/v1/algoOrder")]
