"""The strategies' own track record, kept by brain from the trades' outcomes.

Execute records every position it books closed on trade:stream (``position_closed``,
:class:`shared.models.PositionClosedRecord`) with the strategy of the intent that opened
it. Brain reads that stream in its consumer group (``BrainService.on_trade_event``) and
books each close once in its own table ``brain_closed_trades``, keyed by the signal: a
redelivered, re-claimed or replayed entry changes nothing. ``get`` counts wins and losses
from that table; brain reads no other service's table.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation

from sqlalchemy import Boolean, DateTime, String, func, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from shared.db import PRICE, make_engine, utcnow
from shared.names import REC_POSITION_CLOSED
from shared.records import Record
from shared.settings import Settings


class _BrainBase(DeclarativeBase):
    pass


class ClosedTradeRow(_BrainBase):
    """One closed position of a strategy, as execute reported it (brain's own table)."""

    __tablename__ = "brain_closed_trades"

    signal_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    strategy: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(20))
    side: Mapped[str] = mapped_column(String(8))
    realized_pnl: Mapped[Decimal] = mapped_column(PRICE)
    # decided in Python: SQLite holds the PnL as text, where "0.000" > 0 would be a win
    won: Mapped[bool] = mapped_column(Boolean)
    event_id: Mapped[str] = mapped_column(String(32))  # the trade:stream entry that booked it
    booked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


@dataclass(frozen=True)
class TrackRecord:
    """A strategy's closed trades on one symbol and side."""

    wins: int
    losses: int


@dataclass(frozen=True)
class ClosedTrade:
    signal_id: str
    strategy: str
    symbol: str
    side: str
    realized_pnl: Decimal

    @property
    def won(self) -> bool:
        return self.realized_pnl > 0


def closed_trade(record: Record) -> ClosedTrade | None:
    """The close a trade:stream record reports; None for any other record, and for a close
    that cannot count: no signal or strategy (a position execute adopted), no side, or no
    realised PnL (a stale row booked by reconciliation)."""
    if record.type != REC_POSITION_CLOSED or not record.signal_id:
        return None
    data = record.data
    strategy, side = data.get("strategy"), str(data.get("side") or "").upper()
    if not strategy or side not in ("LONG", "SHORT"):
        return None
    try:
        pnl = Decimal(str(data.get("realized_pnl")))
    except InvalidOperation:
        return None
    if not pnl.is_finite():
        return None
    return ClosedTrade(record.signal_id, str(strategy), str(data.get("symbol", "")).upper(),
                       side, pnl)


class TrackRecordStore:
    """Wins/losses per (strategy, symbol, side) from ``brain_closed_trades``, cached ``ttl``
    seconds (a close booked by this process is seen at once, another's within ``ttl``)."""

    def __init__(self, sessions: sessionmaker, ttl: float = 60.0) -> None:
        self._sessions = sessions
        self._ttl = ttl
        self._cache: dict[tuple[str, str, str], tuple[float, TrackRecord]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, ttl: float = 60.0) -> TrackRecordStore:
        engine = make_engine(settings)
        _BrainBase.metadata.create_all(engine)
        return cls(sessionmaker(engine, expire_on_commit=False), ttl)

    def book(self, event_id: str, trade: ClosedTrade) -> bool:
        """Book one close; False when this signal's close is booked already."""
        with self._sessions() as s:
            if s.get(ClosedTradeRow, trade.signal_id) is not None:
                return False
            s.add(ClosedTradeRow(signal_id=trade.signal_id, strategy=trade.strategy,
                                 symbol=trade.symbol, side=trade.side,
                                 realized_pnl=trade.realized_pnl, won=trade.won,
                                 event_id=event_id))
            try:
                s.commit()
            except IntegrityError:  # another brain process booked it meanwhile
                s.rollback()
                return False
        with self._lock:
            self._cache.pop((trade.strategy, trade.symbol, trade.side), None)
        return True

    def get(self, strategy: str, symbol: str, side: str) -> TrackRecord:
        key = (strategy, symbol, side)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        record = self._load(strategy, symbol, side)
        with self._lock:
            self._cache[key] = (now, record)
        return record

    def _load(self, strategy: str, symbol: str, side: str) -> TrackRecord:
        stmt = (select(func.count().filter(ClosedTradeRow.won.is_(True)),
                       func.count().filter(ClosedTradeRow.won.is_(False)))
                .where(ClosedTradeRow.strategy == strategy, ClosedTradeRow.symbol == symbol,
                       ClosedTradeRow.side == side))
        with self._sessions() as s:
            wins, losses = s.execute(stmt).one()
        return TrackRecord(int(wins or 0), int(losses or 0))


LEGACY_TABLE = "brain_signal_strategies"  # signal -> strategy, before closes carried it


def import_legacy(settings: Settings) -> int:
    """One-off upgrade step (``scripts/migrate_track_record.py``): the closes booked before
    ``position_closed`` carried the strategy, from the old ``signal -> strategy`` table
    joined with execute's ``positions``, into ``brain_closed_trades``. Idempotent; returns
    how many closes it booked. Brain itself never reads execute's table."""
    engine = make_engine(settings)
    if not inspect(engine).has_table(LEGACY_TABLE):
        return 0
    store = TrackRecordStore.from_settings(settings, ttl=0.0)
    query = text(f"SELECT s.signal_id, s.strategy, p.symbol, p.side, p.realized_pnl "
                 f"FROM {LEGACY_TABLE} s JOIN positions p ON p.signal_id = s.signal_id "
                 "WHERE p.status = 'closed' AND p.realized_pnl IS NOT NULL")
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return sum(store.book("legacy", ClosedTrade(str(sid), str(strategy), str(symbol),
                                                str(side), Decimal(str(pnl))))
               for sid, strategy, symbol, side, pnl in rows)
