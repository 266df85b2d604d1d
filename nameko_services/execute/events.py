"""What the exchange's user-data stream means for execute.

The feed appends each ORDER_TRADE_UPDATE / ALGO_UPDATE and each position change to
trade:stream (``shared.models.ExchangeOrderRecord`` / ``ExchangePositionRecord``). Here:

* our stop-loss or take-profit reported NEW is *armed* (the REST answer only said the
  exchange accepted it); its later stages are written to the book as they come;
* a bracket that went off or away (TRIGGERED, FINISHED, CANCELED, EXPIRED, REJECTED), a
  fill of a reduce-only order, or a position gone flat, on a symbol we hold, asks for
  that symbol's reconciliation (book the close, cancel the other leg, re-arm a leg).

Everything else on the stream (execute's own telemetry, balances, other symbols) is
ignored, most of it on the record type alone before any parsing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nameko_services.execute.exchange_ops import BRACKET_TYPES
from nameko_services.execute.store import OrderRecord, TradeStore
from shared.names import REC_EXCHANGE_ORDER, REC_EXCHANGE_POSITION
from shared.records import Record
from shared.state import Order, dec

# record types that can matter; REC_EXCHANGE_BALANCE never does
EXCHANGE_RECORDS = frozenset({REC_EXCHANGE_ORDER, REC_EXCHANGE_POSITION})
# the book's status of our algo order for each exchange status
BOOK_STATUS = {"NEW": "armed", "TRIGGERED": "triggered", "FINISHED": "filled",
               "CANCELED": "canceled", "EXPIRED": "expired", "REJECTED": "rejected"}
ALGO_GONE = frozenset({"TRIGGERED", "FINISHED", "CANCELED", "EXPIRED", "REJECTED"})
OUR_PREFIX = "p95"  # every client id execute sends (shared.exchange.client_order_id)
ENTRY_PREFIX = "p95e"  # a leg's id is its entry's with another prefix (engine.bracket_ids)
LEG_KINDS = {"p95s": "stop_loss", "p95t": "take_profit"}


def wanted(fields: Mapping[str, Any]) -> bool:
    """Cheap test on the raw stream entry: could this record concern execute?"""
    return fields.get("type") in EXCHANGE_RECORDS


class ExchangeEvents:
    def __init__(self, store: TradeStore) -> None:
        self.store = store

    def handle(self, record: Record) -> str | None:
        """Write what the record tells the book; the symbol to reconcile, if any."""
        if record.type == REC_EXCHANGE_ORDER:
            return self._order(record.data)
        if record.type == REC_EXCHANGE_POSITION:
            symbol = str(record.data.get("symbol", ""))
            if dec(record.data.get("quantity")) == 0 and self._held(symbol):
                return symbol
        return None

    def _order(self, data: Mapping[str, Any]) -> str | None:
        order = Order.model_validate(data.get("order") or {})
        if data.get("event") == "ALGO_UPDATE" or order.kind == "algo":
            status = BOOK_STATUS.get(order.status)
            if status is not None and order.client_id.startswith(OUR_PREFIX):
                self.store.advance_order(order.client_id, status, order.order_id,
                                         create=lambda: self._leg_record(order))
            if order.status in ALGO_GONE and self._held(order.symbol):
                return order.symbol
            return None
        if data.get("execution") == "TRADE" and order.reduce_only and self._held(order.symbol):
            return order.symbol
        return None

    def _leg_record(self, order: Order) -> OrderRecord | None:
        """The book's record of one of our legs, from the event and its entry's record."""
        kind = LEG_KINDS.get(order.client_id[:4])
        entry = self.store.order(ENTRY_PREFIX + order.client_id[4:]) if kind else None
        if kind is None or entry is None:
            return None
        return OrderRecord(order.client_id, entry.signal_id, order.symbol, kind, order.side,
                           order.type or BRACKET_TYPES[kind], order.quantity,
                           order.trigger_price)

    def _held(self, symbol: str) -> bool:
        return bool(symbol) and self.store.open_position_for(symbol) is not None
