"""Execution's durable book: orders (recorded before they are sent) and positions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from shared.db import OrderRow, PositionRow, utcnow

# an order's life in the book; a later stage is never overwritten by an earlier one, since
# the user-data stream's event can overtake the REST answer of the same order
STAGES = {"pending": 0, "open": 1, "armed": 2, "triggered": 3,
          "filled": 4, "canceled": 4, "expired": 4, "rejected": 4}


def _new_row(rec: OrderRecord) -> OrderRow:
    return OrderRow(client_order_id=rec.client_order_id, signal_id=rec.signal_id,
                    symbol=rec.symbol, kind=rec.kind, side=rec.side, order_type=rec.order_type,
                    quantity=rec.quantity, trigger_price=rec.trigger_price, status="pending")


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


@dataclass(frozen=True)
class LegResult:
    """A bracket leg as sent: the exchange's id, or the error it was refused with."""

    rec: OrderRecord
    exchange_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class EntryFill:
    client_order_id: str
    exchange_id: str
    avg_price: Decimal
    quantity: Decimal


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

    def claim(self, rec: OrderRecord) -> OrderRow | None:
        """Record an order about to be sent: None when new, else the row already there."""
        try:
            with self._sessions.begin() as s:
                s.add(_new_row(rec))
            return None
        except IntegrityError:
            return self.order(rec.client_order_id)

    def book(self, legs: Sequence[LegResult] = (), *, entry: EntryFill | None = None,
             position: PositionRow | None = None) -> PositionRow | None:
        """What an entry and its brackets came to, and the position: one transaction.

        The legs are written after they were sent: their client ids are derived from the
        entry's, so a redelivery or a restart finds them on the exchange without a record.
        A leg re-sent after a cancel starts over with its new exchange id; a leg the
        user-data stream confirmed already (same exchange id) keeps its later stage.
        """
        try:
            return self._book(legs, entry, position)
        except IntegrityError:  # the stream's event recorded a leg meanwhile: now it is known
            return self._book(legs, entry, position)

    def _book(self, legs: Sequence[LegResult], entry: EntryFill | None,
              position: PositionRow | None) -> PositionRow | None:
        with self._sessions.begin() as s:
            if entry is not None:
                row = s.scalar(select(OrderRow).where(
                    OrderRow.client_order_id == entry.client_order_id))
                if row is not None:
                    row.status, row.exchange_id = "filled", entry.exchange_id
                    row.avg_price, row.quantity = entry.avg_price, entry.quantity
            known = {r.client_order_id: r for r in s.scalars(select(OrderRow).where(
                OrderRow.client_order_id.in_([leg.rec.client_order_id for leg in legs])))}
            for leg in legs:
                row = known.get(leg.rec.client_order_id)
                if row is None:
                    row = _new_row(leg.rec)
                    s.add(row)
                if leg.error is not None:
                    row.status, row.error = "rejected", leg.error[:2000]
                elif row.exchange_id != leg.exchange_id or STAGES.get(row.status, 0) < 1:
                    row.status, row.exchange_id, row.error = "open", leg.exchange_id, None
                row.quantity, row.trigger_price = leg.rec.quantity, leg.rec.trigger_price
            if position is None:
                return None
            existing = s.scalar(select(PositionRow).where(
                PositionRow.signal_id == position.signal_id,
                PositionRow.symbol == position.symbol))
            if existing is not None:
                return existing
            s.add(position)
        return position

    def advance_order(self, client_order_id: str, status: str, exchange_id: str | None = None,
                      create: Callable[[], OrderRecord | None] | None = None) -> bool:
        """Move an order forward to ``status``; False when unknown or already further on.

        ``create`` makes the record of an order not booked yet (the stream's event came
        before the REST answer was booked), so the later booking keeps this stage.
        """
        try:
            return self._advance(client_order_id, status, exchange_id, create)
        except IntegrityError:  # booked meanwhile
            return self._advance(client_order_id, status, exchange_id, None)

    def _advance(self, client_order_id: str, status: str, exchange_id: str | None,
                 create: Callable[[], OrderRecord | None] | None) -> bool:
        with self._sessions.begin() as s:
            row = s.scalar(select(OrderRow).where(OrderRow.client_order_id == client_order_id))
            if row is None:
                rec = create() if create is not None else None
                if rec is None:
                    return False
                row = _new_row(rec)
                s.add(row)
            elif STAGES.get(row.status, 0) > STAGES.get(status, 0):
                return False
            if exchange_id and row.exchange_id and row.exchange_id != exchange_id:
                return False  # an earlier incarnation of a re-armed leg
            row.status = status
            if exchange_id:
                row.exchange_id = exchange_id
            return True

    def end_unsent_entry(self, rec: OrderRecord, reason: str) -> bool:
        """Record an entry that will not be sent any more as rejected with ``reason``.

        True when this call ended it (new, or still pending); False when it had ended
        before (filled, failed: its outcome is known). One conditional UPDATE, so two
        callers cannot both end it."""
        self.claim(rec)
        with self._sessions.begin() as s:
            result = s.execute(update(OrderRow).where(
                OrderRow.client_order_id == rec.client_order_id,
                OrderRow.status == "pending").values(status="rejected", error=reason[:2000]))
            return bool(getattr(result, "rowcount", 0))

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
            return list(s.scalars(select(PositionRow).where(
                PositionRow.status == "open").order_by(PositionRow.id)))

    def position_for_signal(self, signal_id: str) -> PositionRow | None:
        with self._sessions() as s:
            return s.scalar(select(PositionRow).where(PositionRow.signal_id == signal_id))

    def open_position_for(self, symbol: str) -> PositionRow | None:
        """The newest open position of ``symbol`` (a view; never the key of a repair)."""
        rows = self.open_positions_for(symbol)
        return rows[-1] if rows else None

    def open_positions_for(self, symbol: str) -> list[PositionRow]:
        """The open positions of ``symbol``, oldest first: each is its own entry's.

        Normally one; two when a new entry filled before the old one's close was booked.
        """
        with self._sessions() as s:
            return list(s.scalars(select(PositionRow).where(
                PositionRow.symbol == symbol, PositionRow.status == "open",
            ).order_by(PositionRow.id)))

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

    def close_position(self, position_id: int, *, exit_price: Decimal | None,
                       realized_pnl: Decimal | None, fees: Decimal | None,
                       reason: str) -> PositionRow | None:
        """Book one position (by its row, i.e. its entry) as closed; ``realized_pnl`` is
        net of fees. None when it is not open (booked already)."""
        with self._sessions.begin() as s:
            row = s.scalar(select(PositionRow).where(
                PositionRow.id == position_id, PositionRow.status == "open"))
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
