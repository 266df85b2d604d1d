from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis

from nameko_services.feed.account import AccountBook
from nameko_services.feed.metrics import FeedMetrics
from nameko_services.feed.sink import RecordSink
from shared.names import REC_EXCHANGE_BALANCE, REC_EXCHANGE_ORDER, REC_EXCHANGE_POSITION
from shared.records import Record
from shared.settings import Settings
from shared.state import StaleState, StateReader, StateWriter
from tests.unit.feed.payloads import account_update, algo_update, order_update


class FakeRest:
    """The four REST answers of a snapshot, shaped as ccxt returns them."""

    def __init__(self, position_amt: str = "0.010") -> None:
        self.position_amt = position_amt
        self.calls: list[str] = []

    async def fetch_balance(self) -> dict[str, Any]:
        self.calls.append("balance")
        return {"info": {"assets": [{"asset": "USDT", "walletBalance": "1000",
                                     "crossWalletBalance": "934.3",
                                     "availableBalance": "930"}]},
                "USDT": {"free": 930.0, "total": 1000.0}}

    async def fetch_positions(self) -> list[dict[str, Any]]:
        self.calls.append("positions")
        return [{"symbol": "BTC/USDT:USDT", "contracts": abs(float(self.position_amt)),
                 "side": "long", "entryPrice": 6563.665, "unrealizedPnl": 1.5,
                 "marginMode": "isolated", "leverage": 10, "liquidationPrice": 5950.0,
                 "info": {"symbol": "BTCUSDT", "positionAmt": self.position_amt,
                          "isolatedWallet": "65.7"}}]

    async def fetch_open_orders(self, params: dict[str, Any] | None = None
                                ) -> list[dict[str, Any]]:
        if params and params.get("trigger"):
            self.calls.append("algo_orders")
            return [{"id": "2148719", "clientOrderId": "phx-sl-1", "symbol": "BTC/USDT:USDT",
                     "type": "stop_market", "side": "sell", "amount": 0.01, "filled": 0,
                     "triggerPrice": 6400.0, "reduceOnly": True, "status": "open",
                     "info": {"algoId": 2148719, "clientAlgoId": "phx-sl-1",
                              "symbol": "BTCUSDT", "orderType": "STOP_MARKET",
                              "side": "SELL", "algoStatus": "NEW", "quantity": "0.010",
                              "triggerPrice": "6400"}}]
        self.calls.append("orders")
        return []


@pytest.fixture
def account(rds: redis.Redis) -> Iterator[tuple[AccountBook, str]]:
    stream = f"test:feed:trade:{uuid.uuid4().hex[:8]}"
    metrics = FeedMetrics()
    book = AccountBook(StateWriter(rds), RecordSink(rds, 1000, metrics), metrics, stream)
    yield book, stream
    rds.delete(stream)


def records(rds: redis.Redis, stream: str) -> list[Record]:
    return [Record.from_stream_fields(f) for _, f in rds.xrange(stream)]


def synced(book: AccountBook, rest: FakeRest) -> None:
    book.on_connected(object())
    book.store_snapshot(asyncio.run(book.snapshot(rest)))


def test_a_snapshot_replaces_the_account_with_positions_and_algo_orders(
        account: tuple[AccountBook, str], rds: redis.Redis, settings: Settings) -> None:
    book, stream = account
    rest = FakeRest()

    synced(book, rest)
    book.writer.heartbeat(account=True)

    state = StateReader(rds, settings).account()
    assert rest.calls == ["balance", "positions", "orders", "algo_orders"]
    assert (state.balance.wallet, state.balance.cross_wallet) == (Decimal(1000), Decimal("934.3"))
    pos = state.position("BTCUSDT")
    assert pos is not None and (pos.side, pos.quantity, pos.leverage) == \
        ("LONG", Decimal("0.010"), 10)
    (algo,) = state.open_orders("BTCUSDT", kind="algo")
    assert (algo.order_id, algo.client_id, algo.trigger_price) == \
        ("2148719", "phx-sl-1", Decimal(6400))
    assert [r.type for r in records(rds, stream)] == [REC_EXCHANGE_BALANCE,
                                                     REC_EXCHANGE_POSITION]
    assert book.live


def test_events_update_the_account_and_append_records_with_exchange_ids(
        account: tuple[AccountBook, str], rds: redis.Redis, settings: Settings) -> None:
    book, stream = account
    synced(book, FakeRest())

    book.handle(order_update())
    book.handle(account_update("0.020", wb="990", cw="858.6"))
    book.handle(algo_update(algo_id=2148720, kind="TAKE_PROFIT_MARKET", trigger="7000"))
    book.sink.flush()

    state = StateReader(rds, settings).account(fresh=False)
    pos = state.position("BTCUSDT")
    assert pos is not None and pos.quantity == Decimal("0.020") and pos.leverage == 10
    assert state.balance.cross_wallet == Decimal("858.6")
    assert {o.order_id for o in state.open_orders(kind="algo")} == {"2148719", "2148720"}
    recs = records(rds, stream)[2:]  # after the snapshot's
    assert [r.type for r in recs] == [REC_EXCHANGE_ORDER, REC_EXCHANGE_BALANCE,
                                      REC_EXCHANGE_POSITION, REC_EXCHANGE_ORDER]
    assert recs[0].data["order"]["order_id"] == "8886774"
    assert recs[3].data["order"]["order_id"] == "2148720"


def test_a_closing_fill_and_a_cancelled_algo_order_leave_the_state(
        account: tuple[AccountBook, str], rds: redis.Redis, settings: Settings) -> None:
    book, _ = account
    synced(book, FakeRest())

    book.handle(account_update("0", reason="ORDER"))
    book.handle(algo_update(X="CANCELED"))

    state = StateReader(rds, settings).account(fresh=False)
    assert state.positions == () and state.open_orders() == []


def test_a_snapshot_records_a_position_that_closed_while_disconnected(
        account: tuple[AccountBook, str], rds: redis.Redis) -> None:
    book, stream = account
    synced(book, FakeRest())

    book.on_down()
    synced(book, FakeRest(position_amt="0"))

    flat = [r.data for r in records(rds, stream) if r.type == REC_EXCHANGE_POSITION][-1]
    assert (flat["symbol"], flat["quantity"], flat["reason"]) == ("BTCUSDT", "0", "SNAPSHOT")
    assert book.positions == {}


def test_a_drop_makes_the_account_stale_at_once(
        account: tuple[AccountBook, str], rds: redis.Redis, settings: Settings) -> None:
    book, _ = account
    synced(book, FakeRest())
    book.writer.heartbeat(account=True)
    StateReader(rds, settings).account()

    book.on_down()

    with pytest.raises(StaleState) as err:
        StateReader(rds, settings).account()
    assert err.value.reason == "account_state_stale" and not book.live


def test_a_late_close_of_a_replaced_socket_is_ignored(account: tuple[AccountBook, str]) -> None:
    book, _ = account
    old, new = object(), object()
    book.on_connected(old)
    book.on_connected(new)

    ignored = not book.on_down(old)

    assert ignored and book.connected and book.connects == 2
