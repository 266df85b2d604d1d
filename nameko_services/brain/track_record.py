"""The strategies' own track record, from closed trades in the SQL ``positions`` table.

``positions`` (written by execute) knows the signal, symbol, side and realized PnL of every
closed trade but not the strategy that sent it; the brain records ``signal_id -> strategy``
in its own table ``brain_signal_strategies`` when it hands an approved trade on, and reads
the join. It never writes ``positions``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlalchemy import DateTime, String, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from shared.db import PositionRow, make_engine, utcnow
from shared.settings import Settings


class _BrainBase(DeclarativeBase):
    pass


class SignalStrategyRow(_BrainBase):
    __tablename__ = "brain_signal_strategies"

    signal_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    strategy: Mapped[str] = mapped_column(String(64), index=True)
    symbol: Mapped[str] = mapped_column(String(20))
    side: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[object] = mapped_column(DateTime(timezone=True), default=utcnow)


@dataclass(frozen=True)
class Record:
    wins: int
    losses: int


class TrackRecord:
    """Wins/losses per (strategy, symbol, side), cached ``ttl`` seconds."""

    def __init__(self, sessions: sessionmaker, ttl: float = 60.0) -> None:
        self._sessions = sessions
        self._ttl = ttl
        self._cache: dict[tuple[str, str, str], tuple[float, Record]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, ttl: float = 60.0) -> TrackRecord:
        engine = make_engine(settings)
        _BrainBase.metadata.create_all(engine)
        return cls(sessionmaker(engine, expire_on_commit=False), ttl)

    def remember(self, signal_id: str, strategy: str, symbol: str, side: str) -> None:
        """Record which strategy a traded signal came from (idempotent)."""
        with self._sessions() as s:
            if s.get(SignalStrategyRow, signal_id) is not None:
                return
            s.add(SignalStrategyRow(signal_id=signal_id, strategy=strategy, symbol=symbol,
                                    side=side))
            try:
                s.commit()
            except IntegrityError:  # a redelivered message beat us to it
                s.rollback()

    def get(self, strategy: str, symbol: str, side: str) -> Record:
        key = (strategy, symbol, side)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        record = self._load(strategy, symbol, side)
        with self._lock:
            self._cache[key] = (now, record)
        return record

    def _load(self, strategy: str, symbol: str, side: str) -> Record:
        won = PositionRow.realized_pnl > 0
        stmt = (
            select(func.count().filter(won), func.count().filter(~won))
            .select_from(PositionRow)
            .join(SignalStrategyRow, SignalStrategyRow.signal_id == PositionRow.signal_id)
            .where(PositionRow.status == "closed", PositionRow.realized_pnl.is_not(None),
                   SignalStrategyRow.strategy == strategy, PositionRow.symbol == symbol,
                   PositionRow.side == side)
        )
        with self._sessions() as s:
            wins, losses = s.execute(stmt).one()
        return Record(int(wins or 0), int(losses or 0))
