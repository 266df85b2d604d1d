"""Binance USD-M WebSocket payloads -> shared.state models and stream records.

The feed parses the raw events itself (teed from ccxt.pro) because ccxt's structures drop
what the state needs: a kline's ``x`` (closed), a balance's ``cw``, a position's ``iw``,
and ``listenKeyExpired`` entirely. Field names: Binance's user-data stream documentation
(notes/binance-usdm-websocket.md §2-§3).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from shared.models import (
    ExchangeBalanceRecord,
    ExchangeOrderRecord,
    ExchangePositionRecord,
    KlineRecord,
)
from shared.names import REC_EXCHANGE_BALANCE, REC_EXCHANGE_ORDER, REC_EXCHANGE_POSITION
from shared.state import Balance, CandleRow, Order, Position, Side, dec, now_ms

Event = Mapping[str, Any]


def events(message: Any) -> Iterator[Event]:
    """The events of one WebSocket message: raw, ``{"stream","data"}``-wrapped or an array."""
    if isinstance(message, list):
        for item in message:
            yield from events(item)
        return
    if not isinstance(message, Mapping):
        return
    data = message.get("data")
    if "stream" in message and isinstance(data, (Mapping, list)):
        yield from events(data)
    elif "e" in message:
        yield message


def event_ms(ev: Event) -> int:
    """The event time ``E`` (``listenKeyExpired`` sends it as a string)."""
    try:
        return int(ev.get("E") or ev.get("T") or 0)
    except (TypeError, ValueError):
        return 0


def _opt(value: Any) -> Decimal | None:
    d = dec(value)
    return d if d != 0 else None


# --- market ---


def kline_row(k: Mapping[str, Any]) -> CandleRow:
    """A kline ``k`` object as a ccxt OHLCV row ``[t, o, h, l, c, v]``."""
    return [float(k["t"]), float(k["o"]), float(k["h"]), float(k["l"]), float(k["c"]),
            float(k["v"])]


def kline_record(symbol: str, interval: str, row: CandleRow) -> KlineRecord:
    return KlineRecord(symbol=symbol, interval=interval, open_time=int(row[0]),
                       open=_num(row[1]), high=_num(row[2]), low=_num(row[3]),
                       close=_num(row[4]), volume=_num(row[5]))


def _num(value: float) -> str:
    return format(Decimal(repr(value)).normalize(), "f") if value == value else "0"


# --- account ---


def balance_from_ws(b: Mapping[str, Any], at_ms: int | None = None) -> Balance:
    """One ``ACCOUNT_UPDATE.a.B`` entry (no available balance on the stream)."""
    return Balance(asset=str(b.get("a") or "USDT"), wallet=dec(b.get("wb")),
                   cross_wallet=dec(b.get("cw") if b.get("cw") not in (None, "")
                                    else b.get("wb")),
                   available=None, updated_ms=at_ms or now_ms())


def position_from_ws(p: Mapping[str, Any], previous: Position | None = None,
                     at_ms: int | None = None) -> Position | None:
    """One ``ACCOUNT_UPDATE.a.P`` entry; None when flat.

    The stream has no leverage (it changes only through ACCOUNT_CONFIG_UPDATE), so it is
    carried over from the last known position; the exchange's liquidation price is not on
    the stream either and is dropped rather than kept stale after a fill.
    """
    amount = dec(p.get("pa"))
    if amount == 0:
        return None
    ps = str(p.get("ps") or "BOTH").upper()
    side: Side = "LONG" if ps == "LONG" else "SHORT" if ps == "SHORT" else \
        ("LONG" if amount > 0 else "SHORT")
    return Position(
        symbol=str(p["s"]), side=side, quantity=abs(amount), entry_price=dec(p.get("ep")),
        isolated_wallet=dec(p.get("iw")), unrealized_pnl=dec(p.get("up")),
        margin_type=str(p.get("mt") or "isolated").lower(),
        leverage=previous.leverage if previous is not None else None,
        liquidation_price=None, updated_ms=at_ms or now_ms())


def order_from_ws(o: Mapping[str, Any], at_ms: int | None = None) -> Order:
    """An ``ORDER_TRADE_UPDATE.o`` object."""
    avg = _opt(o.get("ap"))
    return Order(
        symbol=str(o.get("s") or ""), kind="order", order_id=str(o.get("i") or ""),
        client_id=str(o.get("c") or ""), type=str(o.get("o") or o.get("ot") or "").upper(),
        side=str(o.get("S") or "").upper(), status=str(o.get("X") or "").upper(),
        quantity=dec(o.get("q")), filled=dec(o.get("z")), avg_price=avg,
        trigger_price=_opt(o.get("sp")), reduce_only=_truthy(o.get("R")),
        updated_ms=at_ms or now_ms())


def algo_order_from_ws(o: Mapping[str, Any], at_ms: int | None = None) -> Order:
    """An ``ALGO_UPDATE.o`` object (a conditional order of ``POST /fapi/v1/algoOrder``)."""
    return Order(
        symbol=str(o.get("s") or ""), kind="algo", order_id=str(o.get("aid") or ""),
        client_id=str(o.get("caid") or ""), type=str(o.get("o") or "").upper(),
        side=str(o.get("S") or "").upper(), status=str(o.get("X") or "").upper(),
        quantity=dec(o.get("q")), filled=dec(o.get("aq")), avg_price=_opt(o.get("ap")),
        trigger_price=_opt(o.get("tp")), reduce_only=_truthy(o.get("R")),
        triggered_order_id=str(o.get("ai") or "") if str(o.get("ai") or "0") != "0" else "",
        reject_reason=str(o.get("rm") or ""), updated_ms=at_ms or now_ms())


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def order_record(event: str, order: Order, o: Mapping[str, Any], at_ms: int
                 ) -> ExchangeOrderRecord:
    trade = str(o.get("x") or "").upper() == "TRADE"
    return ExchangeOrderRecord(
        event=event, order=order.model_dump(mode="json"),
        execution=str(o.get("x") or "").upper(),
        trade_id=str(o.get("t") or "") if trade else "",
        last_fill_price=str(o.get("L") or "0"), last_fill_quantity=str(o.get("l") or "0"),
        commission=str(o.get("n") or "0"), commission_asset=str(o.get("N") or ""),
        realized_pnl=str(o.get("rp") or "0"), event_ms=at_ms)


def position_record(symbol: str, position: Position | None, reason: str, at_ms: int
                    ) -> ExchangePositionRecord:
    return ExchangePositionRecord(
        symbol=symbol, side=position.side if position else "",
        quantity=str(position.quantity) if position else "0",
        entry_price=str(position.entry_price) if position else "0",
        reason=reason, event_ms=at_ms)


def balance_record(balance: Balance, reason: str, at_ms: int) -> ExchangeBalanceRecord:
    return ExchangeBalanceRecord(asset=balance.asset, wallet=str(balance.wallet),
                                 cross_wallet=str(balance.cross_wallet), reason=reason,
                                 event_ms=at_ms)


@dataclass
class AccountChange:
    """What one user-data event changes, and the records it appends to trade:stream."""

    balance: Balance | None = None
    positions: list[Position] = field(default_factory=list)
    flat: list[str] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)
    # (record type, symbol or asset (the Kafka key), record data)
    records: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.balance is None and not (self.positions or self.flat or self.orders)


def account_change(ev: Event, positions: Mapping[str, Position], asset: str = "USDT"
                   ) -> AccountChange:
    """Parse ORDER_TRADE_UPDATE / ALGO_UPDATE / ACCOUNT_UPDATE (others: an empty change)."""
    kind, at = ev.get("e"), event_ms(ev)
    change = AccountChange()
    if kind in ("ORDER_TRADE_UPDATE", "ALGO_UPDATE"):
        o = ev.get("o") or {}
        order = order_from_ws(o) if kind == "ORDER_TRADE_UPDATE" else algo_order_from_ws(o)
        change.orders.append(order)
        change.records.append((REC_EXCHANGE_ORDER, order.symbol,
                               dict(order_record(str(kind), order, o, at))))
    elif kind == "ACCOUNT_UPDATE":
        a = ev.get("a") or {}
        reason = str(a.get("m") or "")
        for b in a.get("B") or ():
            bal = balance_from_ws(b)
            if bal.asset == asset:
                change.balance = bal
            change.records.append((REC_EXCHANGE_BALANCE, bal.asset,
                                   dict(balance_record(bal, reason, at))))
        for p in a.get("P") or ():
            symbol = str(p.get("s") or "")
            pos = position_from_ws(p, positions.get(symbol))
            if pos is None:
                change.flat.append(symbol)
            else:
                change.positions.append(pos)
            change.records.append((REC_EXCHANGE_POSITION, symbol,
                                   dict(position_record(symbol, pos, reason, at))))
    return change
