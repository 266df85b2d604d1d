"""Execution's durable book: orders (recorded before they are sent) and positions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from shared.db import OrderRow, PositionRow, utcnow

# an order's life in the book; a later stage is never overwritten by an earlier one, since
# the user-data stream's event can overtake the REST answer of the same order
STAGES = {"pending": 0, "open": 1, "armed": 2, "triggered": 3,
          "filled": 4, "canceled": 4, "expired": 4, "rejected": 4}


@dataclass(frozen=True)
class OrderRecord:
    client_order_id: str
    signal_id: str
    symbol: str
    kind: str
    side: str
    order_type: str
    quantity: Decimal
    trigger_price: Decimal | None = None


class TradeStore:
    def __init__(self, sessions: sessionmaker) -> None:
        self._sessions = sessions

    def order(self, client_order_id: str) -> OrderRow | None:
        with self._sessions() as s:
            return s.scalar(select(OrderRow).where(OrderRow.client_order_id == client_order_id))

    def record_pending(self, rec: OrderRecord) -> OrderRow:
        """Insert the order before sending it; an existing row (a redelivery) is returned."""
        try:
            with self._sessions.begin() as s:
                row = OrderRow(
                    client_order_id=rec.client_order_id, signal_id=rec.signal_id,
                    symbol=rec.symbol, kind=rec.kind, side=rec.side, order_type=rec.order_type,
                    quantity=rec.quantity, trigger_price=rec.trigger_price, status="pending",
                )
                s.add(row)
            return row
        except IntegrityError:
            existing = self.order(rec.client_order_id)
            assert existing is not None
            return existing

    def record_sending(self, recs: Sequence[OrderRecord]) -> None:
        """Orders about to be sent, in one transaction (the legs of a bracket).

        A leg sent again (re-armed after a cancel) starts its life over: pending, with no
        exchange id, so the events of its new incarnation move it forward again.
        """
        if not recs:
            return
        with self._sessions.begin() as s:
            known = {r.client_order_id: r for r in s.scalars(select(OrderRow).where(
                OrderRow.client_order_id.in_([r.client_order_id for r in recs])))}
            for r in recs:
                row = known.get(r.client_order_id)
                if row is None:
                    s.add(OrderRow(
                        client_order_id=r.client_order_id, signal_id=r.signal_id,
                        symbol=r.symbol, kind=r.kind, side=r.side, order_type=r.order_type,
                        quantity=r.quantity, trigger_price=r.trigger_price, status="pending"))
                else:
                    row.status, row.exchange_id, row.error = "pending", None, None
                    row.quantity, row.trigger_price = r.quantity, r.trigger_price

    def advance_order(self, client_order_id: str, status: str,
                      exchange_id: str | None = None) -> bool:
        """Move an order forward to ``status``; False when unknown or already further on."""
        with self._sessions.begin() as s:
            row = s.scalar(select(OrderRow).where(OrderRow.client_order_id == client_order_id))
            if row is None or STAGES.get(row.status, 0) > STAGES.get(status, 0):
                return False
            if exchange_id and row.exchange_id and row.exchange_id != exchange_id:
                return False  # an earlier incarnation of a re-armed leg
            row.status = status
            if exchange_id:
                row.exchange_id = exchange_id
            return True

    def mark_sent(self, client_order_id: str, exchange_id: str) -> None:
        """The exchange accepted the order (its REST answer)."""
        self.advance_order(client_order_id, "open", exchange_id)

    def orders_by_id(self, client_order_ids: Sequence[str]) -> dict[str, OrderRow]:
        with self._sessions() as s:
            rows = s.scalars(select(OrderRow).where(
                OrderRow.client_order_id.in_(list(client_order_ids))))
            return {r.client_order_id: r for r in rows}

    def update_order(self, client_order_id: str, *, status: str,
                     exchange_id: str | None = None, avg_price: Decimal | None = None,
                     quantity: Decimal | None = None, error: str | None = None) -> None:
        with self._sessions.begin() as s:
            row = s.scalar(select(OrderRow).where(OrderRow.client_order_id == client_order_id))
            if row is None:
                return
            row.status = status
            if exchange_id is not None:
                row.exchange_id = exchange_id
            if avg_price is not None:
                row.avg_price = avg_price
            if quantity is not None:
                row.quantity = quantity
            if error is not None:
                row.error = error[:2000]

    def open_position(self, row: PositionRow) -> PositionRow:
        with self._sessions.begin() as s:
            existing = s.scalar(select(PositionRow).where(
                PositionRow.signal_id == row.signal_id, PositionRow.symbol == row.symbol))
            if existing is not None:
                return existing
            s.add(row)
        return row

    def open_positions(self) -> list[PositionRow]:
        with self._sessions() as s:
            return list(s.scalars(select(PositionRow).where(PositionRow.status == "open")))

    def position_for_signal(self, signal_id: str) -> PositionRow | None:
        with self._sessions() as s:
            return s.scalar(select(PositionRow).where(PositionRow.signal_id == signal_id))

    def open_position_for(self, symbol: str) -> PositionRow | None:
        with self._sessions() as s:
            return s.scalar(select(PositionRow).where(
                PositionRow.symbol == symbol, PositionRow.status == "open"))

    def order_for(self, signal_id: str, kind: str) -> OrderRow | None:
        """The latest order of this kind (entry, stop_loss, ...) sent for a signal."""
        with self._sessions() as s:
            return s.scalar(select(OrderRow).where(
                OrderRow.signal_id == signal_id, OrderRow.kind == kind,
            ).order_by(OrderRow.id.desc()).limit(1))

    def recent_entries(self, symbol: str, limit: int = 5) -> list[OrderRow]:
        """Latest entry orders of a symbol that have no position row (crash leftovers)."""
        with self._sessions() as s:
            booked = select(PositionRow.signal_id).where(PositionRow.symbol == symbol)
            return list(s.scalars(select(OrderRow).where(
                OrderRow.symbol == symbol, OrderRow.kind == "entry",
                OrderRow.status.in_(("pending", "filled")),
                OrderRow.signal_id.not_in(booked),
            ).order_by(OrderRow.id.desc()).limit(limit)))

    def close_position(self, symbol: str, *, exit_price: Decimal | None,
                       realized_pnl: Decimal | None, fees: Decimal | None,
                       reason: str) -> PositionRow | None:
        """Book the open position of ``symbol`` as closed; ``realized_pnl`` is net of fees."""
        with self._sessions.begin() as s:
            row = s.scalar(select(PositionRow).where(
                PositionRow.symbol == symbol, PositionRow.status == "open"))
            if row is None:
                return None
            row.status, row.exit_price, row.realized_pnl = "closed", exit_price, realized_pnl
            row.fees, row.close_reason, row.closed_at = fees, reason, utcnow()
            return row

    def trades(self, limit: int) -> list[PositionRow]:
        with self._sessions() as s:
            return list(s.scalars(
                select(PositionRow).order_by(PositionRow.id.desc()).limit(limit)))


def age_seconds(at: datetime | None) -> float:
    """Seconds since ``at`` (SQLite hands back naive UTC datetimes)."""
    if at is None:
        return float("inf")
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (datetime.now(UTC) - at).total_seconds()
