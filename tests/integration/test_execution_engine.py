"""ExecutionEngine against the real paper exchange (through ccxt), real Redis and both
databases: what a crash, a redelivery or a second instance would do to money."""

from __future__ import annotations

import threading
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import urlsplit

import ccxt
import pytest

from nameko_services.execute.engine import ExecutionEngine, intent_ids
from nameko_services.execute.store import OrderRecord
from shared.models import TradeIntent
from tests.integration.conftest import (
    CCXT_SYMBOL,
    SYMBOL,
    exchange_positions,
    intent,
    pin_price,
    subclassed_client,
)

pytestmark = pytest.mark.integration


def _entry_trades(engine: ExecutionEngine) -> list[dict[str, Any]]:
    return [t for t in engine.gw.client.fetch_my_trades(CCXT_SYMBOL) if t["side"] == "buy"]


def _algo(engine: ExecutionEngine) -> dict[str, dict[str, Any]]:
    return {o["info"]["orderType"]: o for o in engine.gw.client.fetch_open_orders(
        CCXT_SYMBOL, params={"trigger": True})}


def test_entry_is_protected_by_reduce_only_stop_and_take_profit_at_two_percent(engine):
    outcome = engine.open(intent())

    assert outcome.status == "opened"
    position = exchange_positions(engine)[0]
    assert position["contracts"] == 0.01 and position["side"] == "long"
    assert position["marginMode"] == "isolated"
    algo = _algo(engine)
    assert algo["STOP_MARKET"]["triggerPrice"] == 58800.0
    assert algo["TAKE_PROFIT_MARKET"]["triggerPrice"] == 61200.0
    assert all(o["reduceOnly"] and o["side"] == "sell" for o in algo.values())
    assert outcome.details["stop_loss_armed"] and outcome.details["take_profit_armed"]
    assert Decimal(outcome.details["liquidation_price"]).quantize(Decimal("0.01")) == Decimal(
        "57228.92")


def test_short_is_protected_above_and_below(engine):
    outcome = engine.open(intent(side="SHORT"))

    assert outcome.status == "opened"
    algo = _algo(engine)
    assert algo["STOP_MARKET"]["triggerPrice"] == 61200.0
    assert algo["TAKE_PROFIT_MARKET"]["triggerPrice"] == 58800.0
    assert all(o["side"] == "buy" for o in algo.values())


def test_redelivered_intent_never_opens_a_second_position(engine):
    it = intent()
    engine.open(it)

    again = engine.open(it)

    assert again.status == "duplicate"
    assert len(_entry_trades(engine)) == 1
    assert exchange_positions(engine)[0]["contracts"] == 0.01


def _send_entry_and_die(engine: ExecutionEngine, it: TradeIntent, *, recorded: bool) -> None:
    """The previous worker prepared the symbol, sent the entry and died."""
    engine.ops.preflight(SYMBOL)
    cid = intent_ids(it)["entry"]
    if recorded:
        engine.store.record_pending(OrderRecord(cid, it.signal_id, SYMBOL, "entry", "BUY",
                                                "MARKET", it.quantity))
    engine.gw.client.create_order(CCXT_SYMBOL, "market", "buy", 0.01, None,
                                  {"clientOrderId": cid})


def test_crash_after_sending_entry_adopts_the_exchange_order_instead_of_resending(
        engine, make_engine):
    it = intent()
    _send_entry_and_die(engine, it, recorded=True)

    outcome = make_engine().open(it)

    assert outcome.status == "opened"
    assert len(_entry_trades(engine)) == 1
    assert len(_algo(engine)) == 2


def test_entry_the_book_lost_is_looked_up_on_duplicate_client_id_not_failed(
        engine, make_engine):
    it = intent()
    _send_entry_and_die(engine, it, recorded=False)  # the record never reached the book

    outcome = make_engine().open(it)  # sends, gets -4116, looks the order up

    assert outcome.status == "opened"
    assert len(_entry_trades(engine)) == 1
    assert len(_algo(engine)) == 2


def test_two_instances_racing_on_one_intent_open_one_position(engine, make_engine):
    it = intent()
    other = make_engine()
    results: list[str] = []

    threads = [threading.Thread(target=lambda e=e: results.append(e.open(it).status))
               for e in (engine, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert sorted(results) == ["duplicate", "opened"]
    assert len(_entry_trades(engine)) == 1


class _StopsRefused(ccxt.binanceusdm):
    """The exchange refuses the stop-loss (e.g. -2021 after a gap)."""

    def create_order(self, symbol, type, side, amount, price=None, params=None):
        if type == "STOP_MARKET":
            raise ccxt.OrderImmediatelyFillable("Order would immediately trigger.")
        return super().create_order(symbol, type, side, amount, price, params or {})


def test_position_without_stop_loss_is_closed_at_once(engine, make_engine):
    unsafe = make_engine(subclassed_client(engine.gw.client, _StopsRefused))

    outcome = unsafe.open(intent())

    assert outcome.status == "failed"
    assert "stop-loss could not be placed" in outcome.reason
    assert exchange_positions(engine) == []


class _FirstTakeProfitLost(ccxt.binanceusdm):
    """The exchange answers the first take-profit with a 503 (a fault of the moment)."""

    failed = False

    def create_order(self, symbol, type, side, amount, price=None, params=None):
        if type == "TAKE_PROFIT_MARKET" and not _FirstTakeProfitLost.failed:
            _FirstTakeProfitLost.failed = True
            raise ccxt.ExchangeNotAvailable("503 Service Unavailable")
        return super().create_order(symbol, type, side, amount, price, params or {})


def test_take_profit_lost_to_a_passing_fault_is_sent_again_at_once(engine, make_engine):
    _FirstTakeProfitLost.failed = False
    flaky = make_engine(subclassed_client(engine.gw.client, _FirstTakeProfitLost))

    outcome = flaky.open(intent())

    assert outcome.status == "opened" and outcome.reason == ""
    assert set(_algo(engine)) == {"STOP_MARKET", "TAKE_PROFIT_MARKET"}


def test_take_profit_sent_beside_a_refused_stop_is_cancelled_with_the_position(engine,
                                                                               make_engine):
    unsafe = make_engine(subclassed_client(engine.gw.client, _StopsRefused))

    outcome = unsafe.open(intent())

    assert outcome.status == "failed"
    assert exchange_positions(engine) == []
    # no reduce-only order left to cut into the next position on the symbol
    assert _algo(engine) == {}


def test_close_flattens_cancels_brackets_and_books_pnl_net_of_fees(engine, exec_paper):
    engine.open(intent())
    pin_price(exec_paper, 60600)

    outcome = engine.close(SYMBOL, "manual")

    assert outcome.status == "closed"
    # +6.00 USDT gross on 0.01 BTC; taker fees on 600 + 606 USDT notional
    fees = Decimal(outcome.details["fees"])
    assert fees > 0
    assert Decimal(outcome.details["realized_pnl"]) == Decimal("6.0") - fees
    assert exchange_positions(engine) == []
    assert _algo(engine) == {}
    booked = engine.store.trades(1)[0]
    assert (booked.status, booked.close_reason) == ("closed", "manual")


def test_the_intent_strategy_is_booked_with_the_position_and_reported_at_close(engine,
                                                                             exec_paper):
    opened = engine.open(intent().model_copy(update={"strategy": "ema-cross"}))
    pin_price(exec_paper, 60600)

    closed = engine.close(SYMBOL, "signal")

    assert opened.details["strategy"] == "ema-cross"
    assert engine.store.trades(1)[0].strategy == "ema-cross"
    assert (closed.details["strategy"], closed.details["side"]) == ("ema-cross", "LONG")


def test_a_manual_intent_is_priced_bracketed_and_stepped_like_brains(engine, exec_paper):
    pin_price(exec_paper, 60000)

    it = engine.manual_intent(SYMBOL, "LONG", Decimal("0.0109"), "manual:k1")

    price = it.reference_price
    assert abs(price - 60000) < 60  # the paper market's last trade around the pinned price
    assert it.quantity == Decimal("0.010")  # truncated to the 0.001 step
    assert (it.stop_loss, it.take_profit) == (
        (price * Decimal("0.98")).quantize(Decimal("0.1"), ROUND_HALF_UP),
        (price * Decimal("1.02")).quantize(Decimal("0.1"), ROUND_HALF_UP))
    assert it.margin == (Decimal("0.010") * price / 20).quantize(Decimal("0.0001"))
    assert (it.strategy, it.idempotency_key, it.leverage) == ("manual", "manual:k1", 20)


def test_back_to_back_positions_are_settled_with_their_own_fills_only(engine, exec_paper):
    engine.open(intent())
    pin_price(exec_paper, 59400)
    first = engine.close(SYMBOL, "manual")  # -6 USDT gross
    engine.open(intent())  # the same second: the previous close is inside the time window
    pin_price(exec_paper, 60000)

    second = engine.close(SYMBOL, "manual")  # +6 USDT gross

    first_fees, second_fees = (Decimal(o.details["fees"]) for o in (first, second))
    assert Decimal(first.details["realized_pnl"]) == Decimal("-6.0") - first_fees
    assert Decimal(second.details["realized_pnl"]) == Decimal("6.0") - second_fees
    assert second_fees < Decimal("1")  # two taker fills of ~600 USDT, not four


class _LeverageNotApplied(ccxt.binanceusdm):
    """The exchange acknowledges set_leverage but keeps another leverage."""

    def fapiPrivateGetSymbolConfig(self, params=None):
        rows = super().fapiPrivateGetSymbolConfig(params or {})
        return [{**rows[0], "leverage": 10}]


def test_leverage_not_applied_blocks_the_symbol_and_sends_nothing(engine, make_engine):
    broken = make_engine(subclassed_client(engine.gw.client, _LeverageNotApplied))

    outcome = broken.open(intent())
    again = broken.open(intent())

    assert outcome.status == "blocked" and "read back leverage 10" in outcome.reason
    assert again.status == "blocked"
    assert exchange_positions(engine) == []
    assert _entry_trades(engine) == []


class _Counting(ccxt.binanceusdm):
    """Counts every REST request (method, path) the engine makes."""

    requests: list[tuple[str, str]]

    def fetch(self, url, method="GET", headers=None, body=None):
        self.requests.append((method, urlsplit(url).path))
        return super().fetch(url, method, headers, body)


def _counting(engine: ExecutionEngine) -> _Counting:
    client = subclassed_client(engine.gw.client, _Counting)
    client.requests = []
    return client


def test_warm_alert_costs_three_rest_requests_the_entry_then_both_brackets(engine, make_engine):
    client = _counting(engine)
    warm = make_engine(client)
    warm.prepare((SYMBOL,))  # what the service does at start-up
    client.requests.clear()

    outcome = warm.open(intent())

    assert outcome.status == "opened"
    assert outcome.details["stop_loss_armed"] and outcome.details["take_profit_armed"]
    assert client.requests[0] == ("POST", "/fapi/v1/order")
    assert client.requests[1:] == [("POST", "/fapi/v1/algoOrder")] * 2
    assert len(_algo(engine)) == 2


def test_first_alert_after_an_exchange_outage_at_start_up_prepares_the_symbol(
        engine, make_engine):
    down = make_engine(subclassed_client(engine.gw.client, _Unreachable))
    down.prepare((SYMBOL,))  # the exchange is down at start-up: postponed, not blocked
    assert not down.ops.is_prepared(SYMBOL) and down.block_reason(SYMBOL) is None

    down.gw.client.__class__ = _Counting  # the exchange is back
    down.gw.client.requests = []
    outcome = down.open(intent())

    assert outcome.status == "opened"
    assert ("POST", "/fapi/v1/leverage") in down.gw.client.requests
    assert down.ops.is_prepared(SYMBOL)


class _Unreachable(ccxt.binanceusdm):
    def fetch(self, url, method="GET", headers=None, body=None):
        raise ccxt.NetworkError("connection refused")


class _BracketsMeet(ccxt.binanceusdm):
    """An algo order's request waits until the other one is in flight as well: sent one
    after the other, the first would wait in vain and fail."""

    barrier: threading.Barrier

    def fetch(self, url, method="GET", headers=None, body=None):
        if method == "POST" and urlsplit(url).path == "/fapi/v1/algoOrder":
            self.barrier.wait()
        return super().fetch(url, method, headers, body)


def test_stop_loss_and_take_profit_are_in_flight_at_the_same_time(engine, make_engine):
    client = subclassed_client(engine.gw.client, _BracketsMeet)
    client.barrier = threading.Barrier(2, timeout=10)

    outcome = make_engine(client).open(intent())

    assert outcome.status == "opened"
    assert outcome.details["stop_loss_armed"] and outcome.details["take_profit_armed"]
    assert not client.barrier.broken


def test_redelivered_intent_after_a_refused_take_profit_arms_only_what_is_missing(
        engine, make_engine):
    it = intent()
    partial = make_engine(subclassed_client(engine.gw.client, _TakeProfitRefused)).open(it)
    assert partial.status == "opened" and not partial.details["take_profit_armed"]

    from nameko_services.execute.reconcile import Reconciler
    [rearmed] = Reconciler(make_engine()).run()

    assert (rearmed.kind, rearmed.details["kind"]) == ("rearmed", "take_profit")
    assert set(_algo(engine)) == {"STOP_MARKET", "TAKE_PROFIT_MARKET"}


class _TakeProfitRefused(ccxt.binanceusdm):
    def create_order(self, symbol, type, side, amount, price=None, params=None):
        if type == "TAKE_PROFIT_MARKET":
            raise ccxt.InvalidOrder("take profit refused")
        return super().create_order(symbol, type, side, amount, price, params or {})
