from __future__ import annotations

from decimal import Decimal

from nameko_services.feed.parsing import (
    account_change,
    algo_order_from_ws,
    event_ms,
    events,
    kline_record,
    kline_row,
    order_from_ws,
)
from shared.names import REC_EXCHANGE_BALANCE, REC_EXCHANGE_ORDER, REC_EXCHANGE_POSITION
from shared.state import Position
from tests.unit.feed.payloads import (
    LISTEN_KEY_EXPIRED,
    MARK,
    account_update,
    algo_update,
    kline,
    order_update,
)


def test_events_unwraps_combined_streams_and_arrays_and_skips_acks() -> None:
    wrapped = {"stream": "btcusdt@markPrice@1s", "data": MARK}
    array = [MARK, {**MARK, "s": "ETHUSDT"}]
    ack = {"result": None, "id": 1}

    assert list(events(wrapped)) == [MARK]
    assert [e["s"] for e in events(array)] == ["BTCUSDT", "ETHUSDT"]
    assert list(events(ack)) == []
    assert list(events("not json")) == []


def test_event_time_reads_the_string_time_of_listen_key_expired() -> None:
    assert event_ms(LISTEN_KEY_EXPIRED) == 1736996475556
    assert event_ms(MARK) == 1562305380000


def test_account_update_gives_cross_wallet_isolated_wallet_and_side_from_sign() -> None:
    change = account_change(account_update("-0.010"), {})

    assert change.balance is not None
    assert (change.balance.wallet, change.balance.cross_wallet) == \
        (Decimal("1000.5"), Decimal("900.25"))
    assert change.balance.available is None  # the stream has no available balance
    (pos,) = change.positions
    assert (pos.symbol, pos.side, pos.quantity) == ("BTCUSDT", "SHORT", Decimal("0.010"))
    assert (pos.entry_price, pos.isolated_wallet) == (Decimal("6563.665"), Decimal("65.7"))
    assert pos.margin_type == "isolated"
    assert change.flat == []


def test_account_update_keeps_leverage_and_drops_the_old_liquidation_price() -> None:
    before = Position(symbol="BTCUSDT", side="LONG", quantity=Decimal("0.005"),
                      entry_price=Decimal(6500), leverage=20,
                      liquidation_price=Decimal(6200))

    (pos,) = account_change(account_update("0.010"), {"BTCUSDT": before}).positions

    assert (pos.side, pos.leverage, pos.liquidation_price) == ("LONG", 20, None)


def test_a_zero_position_amount_is_a_flat_symbol_with_an_empty_side_record() -> None:
    change = account_change(account_update("0", reason="ORDER"), {})

    assert change.positions == [] and change.flat == ["BTCUSDT"]
    records = {t: (key, data) for t, key, data in change.records}
    key, data = records[REC_EXCHANGE_POSITION]
    assert key == "BTCUSDT"
    assert data == {"symbol": "BTCUSDT", "side": "", "quantity": "0", "entry_price": "0",
                    "reason": "ORDER", "event_ms": 1564745798939}
    assert records[REC_EXCHANGE_BALANCE][1]["cross_wallet"] == "900.25"


def test_order_trade_update_keeps_the_exchange_ids_and_the_fill() -> None:
    ev = order_update()

    change = account_change(ev, {})

    (order,) = change.orders
    assert (order.kind, order.order_id, order.client_id) == ("order", "8886774", "phx-open-1")
    assert (order.status, order.is_open, order.filled) == ("FILLED", False, Decimal("0.010"))
    assert order.trigger_price is None and order.avg_price == Decimal("6563.665")
    ((rec_type, key, data),) = change.records
    assert (rec_type, key) == (REC_EXCHANGE_ORDER, "BTCUSDT")
    assert data["event"] == "ORDER_TRADE_UPDATE" and data["execution"] == "TRADE"
    assert (data["trade_id"], data["last_fill_price"], data["commission"]) == \
        ("77001", "6563.665", "0.02625466")
    assert data["order"]["order_id"] == "8886774" and data["event_ms"] == 1568879465651


def test_a_new_order_has_no_trade_id() -> None:
    order = order_from_ws(order_update(x="NEW", X="NEW")["o"])
    data = account_change(order_update(x="NEW", X="NEW"), {}).records[0][2]

    assert order.is_open and data["trade_id"] == ""


def test_algo_update_is_an_algo_order_with_its_trigger_and_child() -> None:
    placed = algo_order_from_ws(algo_update()["o"])
    triggered = algo_order_from_ws(algo_update(X="TRIGGERED", ai="99001")["o"])
    rejected = algo_order_from_ws(algo_update(X="REJECTED", rm="Reduce Only reject")["o"])

    assert (placed.kind, placed.order_id, placed.client_id) == ("algo", "2148719", "phx-sl-1")
    assert (placed.type, placed.trigger_price, placed.reduce_only) == \
        ("STOP_MARKET", Decimal(6400), True)
    assert placed.is_open and placed.triggered_order_id == ""
    assert triggered.triggered_order_id == "99001" and not triggered.is_open
    assert rejected.reject_reason == "Reduce Only reject"


def test_events_the_state_does_not_keep_change_nothing() -> None:
    change = account_change({"e": "ACCOUNT_CONFIG_UPDATE", "E": 1, "ac": {"s": "BTCUSDT",
                                                                          "l": 25}}, {})

    assert change.empty and change.records == []


def test_kline_row_and_record() -> None:
    row = kline_row(kline(1638747660000, "101.25", True)["k"])

    assert row == [1638747660000.0, 100.0, 110.5, 99.5, 101.25, 1000.0]
    assert kline_record("BTCUSDT", "1m", row) == {
        "symbol": "BTCUSDT", "interval": "1m", "open_time": 1638747660000, "open": "100",
        "high": "110.5", "low": "99.5", "close": "101.25", "volume": "1000"}
