"""Money-safe under time and faults (issue 10): late intents, re-entry inside the reconcile
interval, failing closes, an open circuit, lapsing locks, refusals that are not failures.

Real paper exchange (through ccxt), real Redis, both databases."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import ccxt
import pytest
import redis

from nameko_services.execute.engine import ExecutionEngine, LockBusy, SymbolLock
from nameko_services.execute.reconcile import Reconciler
from tests.integration.conftest import (
    CCXT_SYMBOL,
    EXEC_REDIS_URL,
    SYMBOL,
    intent,
    pin_price,
    subclassed_client,
)

pytestmark = pytest.mark.integration


def _algo(engine: ExecutionEngine) -> list[dict[str, Any]]:
    return engine.gw.client.fetch_open_orders(CCXT_SYMBOL, params={"trigger": True})


def _triggers(engine: ExecutionEngine) -> dict[str, float]:
    return {o["info"]["orderType"]: o["triggerPrice"] for o in _algo(engine)}


def _buys(engine: ExecutionEngine) -> int:
    return len([t for t in engine.gw.client.fetch_my_trades(CCXT_SYMBOL) if t["side"] == "buy"])


# --- 1. quick re-entry inside the reconcile interval ---

def test_reentry_after_the_stop_fired_keeps_the_new_position_and_only_its_own_brackets(
        engine, exec_paper):
    first = engine.open(intent())
    pin_price(exec_paper, 58700)  # the first position's stop fires on the exchange
    second = engine.open(intent())  # a new alert, before reconciliation ran
    assert (first.status, second.status) == ("opened", "opened")

    corrections = Reconciler(engine).run()

    assert [(c.kind, c.signal_id, c.details.get("reason")) for c in corrections] == [
        ("booked_close", first.signal_id, "stop_loss")]
    assert Decimal(corrections[0].details["realized_pnl"]) < Decimal("-12")
    # its own two fills (entry 600 + stop 587 USDT at 5 bp), not the new entry's as well
    assert Decimal(corrections[0].details["fees"]) < Decimal("0.6")
    [position] = engine.gw.open_positions()
    assert (position.side, position.quantity) == ("LONG", Decimal("0.01"))
    # the new position's own brackets (2 % around 58,700); the old take-profit is gone
    assert _triggers(engine) == {"STOP_MARKET": 57526.0, "TAKE_PROFIT_MARKET": 59874.0}
    [open_row] = engine.store.open_positions()
    assert open_row.signal_id == second.signal_id
    closed = engine.store.position_for_signal(first.signal_id)
    assert (closed.status, closed.close_reason) == ("closed", "stop_loss")


# --- 2. manual close: close first, then cancel what is left ---

class _CloseFails(ccxt.binanceusdm):
    def create_order(self, symbol, type, side, amount, price=None, params=None):
        if (params or {}).get("reduceOnly") and type == "market":
            raise ccxt.ExchangeNotAvailable("503 Service Unavailable")
        return super().create_order(symbol, type, side, amount, price, params or {})


def test_manual_close_that_fails_leaves_the_position_protected(engine, make_engine):
    engine.open(intent())
    failing = make_engine(subclassed_client(engine.gw.client, _CloseFails))

    with pytest.raises(Exception):  # noqa: B017 - whatever the outage raises
        failing.close(SYMBOL, "manual")

    assert len(engine.gw.open_positions()) == 1
    assert set(_triggers(engine)) == {"STOP_MARKET", "TAKE_PROFIT_MARKET"}


# --- 3. protective orders are not short-circuited by the breaker ---

class _StopRefusedBreakerOpens(ccxt.binanceusdm):
    """The stop-loss fails and the failures of the moment have opened the circuit."""

    engine: ExecutionEngine

    def create_order(self, symbol, type, side, amount, price=None, params=None):
        if type == "STOP_MARKET":
            self.engine.gw.breaker.open()
            raise ccxt.OrderImmediatelyFillable("Order would immediately trigger.")
        return super().create_order(symbol, type, side, amount, price, params or {})


def test_emergency_close_goes_through_an_open_circuit(engine, make_engine):
    client = subclassed_client(engine.gw.client, _StopRefusedBreakerOpens)
    unsafe = make_engine(client)
    client.engine = unsafe

    outcome = unsafe.open(intent())

    assert outcome.status == "failed" and "position closed" in outcome.reason
    assert engine.gw.open_positions() == []


class _FlakyClose(ccxt.binanceusdm):
    """Every reduce-only market order fails twice with a network error, then goes."""

    failures: int = 0

    def create_order(self, symbol, type, side, amount, price=None, params=None):
        if (params or {}).get("reduceOnly") and type == "market" and self.failures < 2:
            self.failures += 1
            raise ccxt.RequestTimeout("read timeout")
        if type == "STOP_MARKET":
            raise ccxt.OrderImmediatelyFillable("Order would immediately trigger.")
        return super().create_order(symbol, type, side, amount, price, params or {})


def test_emergency_close_retries_network_failures_on_its_own_budget(engine, make_engine):
    client = subclassed_client(engine.gw.client, _FlakyClose)

    outcome = make_engine(client).open(intent())

    assert outcome.status == "failed" and "position closed" in outcome.reason
    assert client.failures == 2
    assert engine.gw.open_positions() == []


# --- 4. intents expire ---

def _aged(seconds: float, **kw: Any):
    it = intent(**kw)
    return it.model_copy(update={"received_at": datetime.now(UTC) - timedelta(seconds=seconds)})


def test_intent_older_than_the_analysis_timeout_is_not_traded(engine):
    outcome = engine.open(_aged(31))
    again = engine.open(_aged(31).model_copy(update={"signal_id": outcome.signal_id}))

    assert (outcome.status, outcome.reason) == ("failed", "intent_expired")
    assert engine.gw.open_positions() == [] and _buys(engine) == 0
    assert again.status == "failed"  # a redelivery of it stays failed, sends nothing
    assert _buys(engine) == 0


def test_late_redelivery_of_an_intent_already_sent_is_completed_not_expired(engine, make_engine):
    fresh = intent()
    from nameko_services.execute.engine import intent_ids
    from nameko_services.execute.store import OrderRecord
    engine.ops.preflight(SYMBOL)
    cid = intent_ids(fresh)["entry"]
    engine.store.record_pending(OrderRecord(cid, fresh.signal_id, SYMBOL, "entry", "BUY",
                                            "MARKET", fresh.quantity))
    engine.gw.client.create_order(CCXT_SYMBOL, "market", "buy", 0.01, None,
                                  {"clientOrderId": cid})  # sent, then the worker died
    late = fresh.model_copy(update={"received_at": datetime.now(UTC) - timedelta(seconds=90)})

    outcome = make_engine().open(late)

    assert outcome.status == "opened"
    assert len(_algo(engine)) == 2 and _buys(engine) == 1


def test_a_killed_lock_holder_blocks_its_symbol_for_at_most_ten_seconds():
    # nothing releases the lease of a kill -9'd worker: its TTL is how long the position it
    # may have just opened waits for reconciliation (the protection bar is 10 s)
    from shared.names import SYMBOL_LOCK_PREFIX

    client = redis.Redis.from_url(EXEC_REDIS_URL)
    symbol = f"T{uuid.uuid4().hex[:8]}"
    with SymbolLock(client).hold(symbol):
        ttl_ms = client.pttl(SYMBOL_LOCK_PREFIX + symbol)

    assert 0 < ttl_ms <= 10_000


class _Killed(BaseException):
    """kill -9 between the exchange's answers and the book's write."""


def test_redelivery_after_a_kill_that_left_entry_and_both_brackets_is_completed(
        engine, make_engine, monkeypatch):
    # chaos kill-execute: the dying worker had sent the entry and both legs; the redelivered
    # intent found both legs open, had nothing left to send and died on an empty batch
    # (IndexError), so the intent was dead-lettered without an outcome
    it = intent()

    def killed(*args: Any, **kwargs: Any) -> None:
        raise _Killed

    monkeypatch.setattr(engine.store, "book", killed)
    with pytest.raises(_Killed):
        engine.open(it)
    assert len(_algo(engine)) == 2 and _buys(engine) == 1

    outcome = make_engine().open(it)

    assert outcome.status == "opened"
    assert outcome.details["stop_loss_armed"] and outcome.details["take_profit_armed"]
    assert len(_algo(engine)) == 2 and _buys(engine) == 1  # nothing sent twice


# --- 5. the lock is a lease kept while working; refusals that are not failures ---

def test_symbol_lock_is_extended_while_the_work_goes_on():
    client = redis.Redis.from_url(EXEC_REDIS_URL)
    symbol = f"T{uuid.uuid4().hex[:8]}"
    lock = SymbolLock(client, ttl_ms=300, wait_s=0.05)

    with lock.hold(symbol):
        time.sleep(1.0)  # a slow trade: three lease lengths
        with pytest.raises(LockBusy):
            with SymbolLock(client, ttl_ms=300, wait_s=0.05).hold(symbol):
                pass
    with SymbolLock(client, ttl_ms=300, wait_s=0.05).hold(symbol):
        pass  # released at the end


class _StopRearmRefused(ccxt.binanceusdm):
    def create_order(self, symbol, type, side, amount, price=None, params=None):
        if type == "STOP_MARKET":
            raise ccxt.InvalidOrder("binanceusdm {\"code\":-4045,\"msg\":\"Reach max stop "
                                    "order limit.\"}")
        return super().create_order(symbol, type, side, amount, price, params or {})


def test_stop_rearm_refused_for_another_reason_alerts_and_keeps_the_position(
        engine, make_engine):
    engine.open(intent())
    [stop] = [o for o in _algo(engine) if o["info"]["orderType"] == "STOP_MARKET"]
    engine.gw.client.cancel_order(stop["id"], CCXT_SYMBOL, {"trigger": True})
    refusing = make_engine(subclassed_client(engine.gw.client, _StopRearmRefused))

    [correction] = Reconciler(refusing).run()

    assert correction.kind == "rearm_failed" and correction.level == "critical"
    assert len(engine.gw.open_positions()) == 1  # not closed at market


# --- 8. business refusals end in a recorded failed outcome ---

class _MarginRefused(ccxt.binanceusdm):
    def set_leverage(self, leverage, symbol=None, params=None):
        raise ccxt.PermissionDenied("binanceusdm {\"code\":-2015,\"msg\":\"Invalid API-key\"}")


def test_exchange_refusal_in_preflight_is_a_failed_outcome_not_an_exception(engine, make_engine):
    refusing = make_engine(subclassed_client(engine.gw.client, _MarginRefused))

    outcome = refusing.open(intent())

    assert outcome.status in ("failed", "blocked")
    assert "Invalid API-key" in outcome.reason
    assert engine.gw.open_positions() == []


# --- 6. idempotency: a reused alert id is reported, never silently dropped ---

def test_alert_id_reused_by_another_signal_is_reported_as_a_clash(engine):
    first = engine.open(intent(key="id:reused"))
    engine.close(SYMBOL, "manual")

    reused = engine.open(intent(key="id:reused"))  # a new signal, the same alert id

    assert first.status == "opened"
    assert reused.status == "failed" and "idempotency" in reused.reason
    assert reused.signal_id != first.signal_id


def test_the_same_alert_id_of_another_strategy_is_traded(engine):
    a = engine.open(intent(key="id:7"))
    b = engine.open(intent(key="id:7").model_copy(update={"strategy": "other",
                                                          "side": "LONG"}))

    assert (a.status, b.status) == ("opened", "opened")


# --- 10. partial fills, fees in another asset, blocks that lift ---

class _HalfFilled(ccxt.binanceusdm):
    """The market entry fills half and expires (thin book)."""

    def create_order(self, symbol, type, side, amount, price=None, params=None):
        params = params or {}
        if type == "market" and not params.get("reduceOnly"):
            raw = super().create_order(symbol, type, side, amount / 2, price, params)
            raw["status"], raw["amount"] = "expired", amount
            raw["info"] = {**raw["info"], "status": "EXPIRED", "origQty": str(amount)}
            return raw
        return super().create_order(symbol, type, side, amount, price, params)


def test_partly_filled_entry_is_protected_at_once_for_the_filled_quantity(engine, make_engine):
    outcome = make_engine(subclassed_client(engine.gw.client, _HalfFilled)).open(
        intent(quantity="0.020"))

    assert outcome.status == "opened"
    assert Decimal(outcome.details["quantity"]) == Decimal("0.01")
    orders = _algo(engine)
    assert len(orders) == 2 and all(o["amount"] == 0.01 for o in orders)


class _FeesInBnb(ccxt.binanceusdm):
    def fetch_my_trades(self, symbol=None, since=None, limit=None, params=None):
        trades = super().fetch_my_trades(symbol, since, limit, params or {})
        for t in trades:
            t["fee"] = {"cost": 0.001, "currency": "BNB"}
        return trades


def test_fees_paid_in_bnb_are_not_subtracted_as_usdt(engine, make_engine, exec_paper):
    bnb = make_engine(subclassed_client(engine.gw.client, _FeesInBnb))
    bnb.open(intent())
    pin_price(exec_paper, 60600)

    outcome = bnb.close(SYMBOL, "manual")

    # 6 USDT gross; 2 x 0.001 BNB at the BNB price, never 0.002 "USDT"
    fees = Decimal(outcome.details["fees"])
    assert fees != Decimal("0.002")
    assert Decimal(outcome.details["realized_pnl"]) == Decimal("6.0") - fees


class _LeverageNotApplied(ccxt.binanceusdm):
    def fapiPrivateGetSymbolConfig(self, params=None):
        rows = super().fapiPrivateGetSymbolConfig(params or {})
        return [{**rows[0], "leverage": 10}]


def test_preflight_block_is_shared_and_lifts_when_a_later_preflight_passes(
        engine, make_engine):
    broken = make_engine(subclassed_client(engine.gw.client, _LeverageNotApplied))
    blocked = broken.open(intent())
    other = make_engine()
    assert blocked.status == "blocked"
    assert "read back leverage 10" in (other.block_reason(SYMBOL) or "")

    broken.gw.client.__class__ = ccxt.binanceusdm  # someone fixed the account
    outcome = broken.open(intent())

    assert outcome.status == "opened"
    assert other.block_reason(SYMBOL) is None


def test_stop_fired_event_handled_after_a_reentry_books_only_the_old_position(
        engine, exec_paper):
    from nameko_services.execute import events
    from shared.models import ExchangeOrderRecord
    from shared.names import REC_EXCHANGE_ORDER
    from shared.records import Record
    from shared.state import now_ms

    first = engine.open(intent())
    [stop] = [o for o in engine.gw.open_orders(SYMBOL) if o.type == "STOP_MARKET"]
    pin_price(exec_paper, 58700)  # the stop fires; its event waits behind the next entry
    second = engine.open(intent())
    data = ExchangeOrderRecord(
        event="ALGO_UPDATE", order=stop.model_copy(update={"status": "FINISHED"}).model_dump(
            mode="json"), execution="", trade_id="", last_fill_price="",
        last_fill_quantity="", commission="", commission_asset="", realized_pnl="",
        event_ms=now_ms())
    record = Record.from_stream_fields(Record(REC_EXCHANGE_ORDER, dict(data)).stream_fields())

    symbol = events.ExchangeEvents(engine.store).handle(record)
    corrections = Reconciler(engine).on_event(symbol)

    assert [(c.kind, c.signal_id) for c in corrections] == [("booked_close", first.signal_id)]
    assert _triggers(engine) == {"STOP_MARKET": 57526.0, "TAKE_PROFIT_MARKET": 59874.0}
    assert len(engine.gw.open_positions()) == 1
    assert [r.signal_id for r in engine.store.open_positions()] == [second.signal_id]
