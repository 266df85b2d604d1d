"""Binance USD-M user-data events built from the engine's :mod:`.events` snapshots.

Field names and types follow Binance's docs and the official SDK models
(``ORDER_TRADE_UPDATE``, ``ACCOUNT_UPDATE``, ``ALGO_UPDATE``, ``listenKeyExpired``): prices
and quantities are strings, times integer milliseconds, flags booleans.
"""

from __future__ import annotations

from typing import Any

from .events import AccountEvent, AlgoEvent, OrderEvent, UserEvent
from .market import SYMBOLS
from .models import ZERO, num

Payload = dict[str, Any]


def _price(symbol: str, value: Any) -> str:
    return num(value, SYMBOLS[symbol].price_precision) if value else "0"


def order_trade_update(ev: OrderEvent, event_time: int) -> Payload:
    o, t = ev.order, ev.trade
    return {"e": "ORDER_TRADE_UPDATE", "E": event_time, "T": ev.time, "o": {
        "s": o.symbol, "c": o.client_order_id, "S": o.side, "o": o.type, "f": "GTC",
        "q": num(o.orig_qty), "p": "0", "ap": _price(o.symbol, o.avg_price), "sp": "0",
        "x": ev.execution, "X": o.status, "i": o.order_id,
        "l": num(t.qty) if t else "0", "z": num(o.executed_qty),
        "L": _price(o.symbol, t.price) if t else "0", "N": "USDT",
        "n": num(t.commission, 8) if t else "0", "T": ev.time, "t": t.trade_id if t else 0,
        "b": "0", "a": "0", "m": False, "R": o.reduce_only, "wt": "CONTRACT_PRICE",
        "ot": o.type, "ps": "BOTH", "cp": o.close_position, "AP": "0", "cr": "0", "rp": num(
            t.realized_pnl if t else ZERO, 8), "pP": False, "si": 0, "ss": 0,
        "V": "EXPIRE_MAKER", "pm": "NONE", "gtd": 0, "er": "0",
    }}


def account_update(ev: AccountEvent, event_time: int) -> Payload:
    p = ev.position
    places = SYMBOLS[p.symbol].price_precision
    return {"e": "ACCOUNT_UPDATE", "E": event_time, "T": ev.time, "a": {
        "m": ev.reason,
        "B": [{"a": "USDT", "wb": num(ev.wallet, 8), "cw": num(ev.available, 8),
               "bc": num(ev.balance_change, 8)}],
        "P": [{"s": p.symbol, "pa": num(p.amount), "ep": num(p.entry_price, places),
               "bep": num(p.entry_price, places), "cr": num(ev.cum_realized, 8),
               "up": num(p.unrealized(ev.mark), 8), "mt": "isolated",
               "iw": num(p.isolated_wallet, 8), "ps": "BOTH"}],
    }}


def algo_update(ev: AlgoEvent, event_time: int) -> Payload:
    a = ev.algo
    return {"e": "ALGO_UPDATE", "T": ev.time, "E": event_time, "o": {
        "caid": a.client_algo_id, "aid": a.algo_id, "at": "CONDITIONAL", "o": a.order_type,
        "s": a.symbol, "S": a.side, "ps": "BOTH", "f": "GTC", "q": num(a.quantity),
        "X": a.status, "ai": str(a.actual_order_id) if a.actual_order_id else "",
        "ap": _price(a.symbol, a.actual_price),
        "aq": num(a.quantity) if a.actual_order_id else "0", "act": "0",
        "tp": num(a.trigger_price), "p": "0", "V": "EXPIRE_MAKER", "wt": a.working_type,
        "pm": "NONE", "cp": a.close_position, "pP": False, "R": a.reduce_only,
        "tt": a.trigger_time, "gtd": 0, "rm": ev.reason,
    }}


def user_payload(ev: UserEvent, event_time: int) -> Payload:
    if isinstance(ev, OrderEvent):
        return order_trade_update(ev, event_time)
    if isinstance(ev, AccountEvent):
        return account_update(ev, event_time)
    return algo_update(ev, event_time)


def listen_key_expired(key: str, event_time: int) -> Payload:
    return {"e": "listenKeyExpired", "E": event_time, "listenKey": key}
