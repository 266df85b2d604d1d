"""SQL persistence (SQLAlchemy 2): SQLite file by default, PostgreSQL when configured.

The schema is created on first use (``create_all`` is idempotent).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import (
    DateTime,
    Integer,
    Numeric,
    String,
    Text,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from shared.settings import Settings

PRICE = Numeric(28, 12)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class OrderRow(Base):
    """Every order we send, recorded *before* it is sent (state ``pending``)."""

    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client_order_id: Mapped[str] = mapped_column(String(36), unique=True, index=True)
    signal_id: Mapped[str] = mapped_column(String(64), index=True)
    symbol: Mapped[str] = mapped_column(String(20), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # entry | stop_loss | take_profit | close
    side: Mapped[str] = mapped_column(String(8))  # BUY | SELL
    order_type: Mapped[str] = mapped_column(String(24))
    quantity: Mapped[Decimal] = mapped_column(PRICE)
    trigger_price: Mapped[Decimal | None] = mapped_column(PRICE, nullable=True)
    avg_price: Mapped[Decimal | None] = mapped_column(PRICE, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    exchange_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    fee: Mapped[Decimal | None] = mapped_column(PRICE, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class PositionRow(Base):
    """A position we opened (or adopted), open until booked closed with its PnL."""

    __tablename__ = "positions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    signal_id: Mapped[str] = mapped_column(String(64), index=True)
    symbol: Mapped[str] = mapped_column(String(20), index=True)
    side: Mapped[str] = mapped_column(String(8))  # LONG | SHORT
    quantity: Mapped[Decimal] = mapped_column(PRICE)
    entry_price: Mapped[Decimal] = mapped_column(PRICE)
    leverage: Mapped[int] = mapped_column(Integer)
    margin: Mapped[Decimal] = mapped_column(PRICE)
    stop_loss: Mapped[Decimal | None] = mapped_column(PRICE, nullable=True)
    take_profit: Mapped[Decimal | None] = mapped_column(PRICE, nullable=True)
    liquidation_price: Mapped[Decimal | None] = mapped_column(PRICE, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    exit_price: Mapped[Decimal | None] = mapped_column(PRICE, nullable=True)
    realized_pnl: Mapped[Decimal | None] = mapped_column(PRICE, nullable=True)
    fees: Mapped[Decimal | None] = mapped_column(PRICE, nullable=True)
    close_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RiskStateRow(Base):
    """Trading state (ACTIVE / REDUCING / HALTED); one row, survives every restart."""

    __tablename__ = "risk_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def make_engine(settings: Settings) -> Engine:
    url = settings.database.resolved_url()
    if url.startswith("sqlite:///"):
        from pathlib import Path

        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record):  # type: ignore[no-untyped-def]
            # WAL lets risk, execute and the dashboard read while one process writes.
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()
    else:
        engine = create_engine(url, pool_pre_ping=True)
    _create_schema(engine)
    return engine


def _create_schema(engine: Engine) -> None:
    """Create missing tables and add missing nullable columns (forward-only migration).

    Two services starting together may race on it, hence the retries.
    """
    for attempt in range(3):
        try:
            Base.metadata.create_all(engine)
            _add_missing_columns(engine)
            return
        except (OperationalError, ProgrammingError, IntegrityError):
            # the other process created a table between our check and our CREATE
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))


def make_sessionmaker(settings: Settings) -> sessionmaker:
    return sessionmaker(make_engine(settings), expire_on_commit=False)


def _add_missing_columns(engine: Engine) -> None:
    """Columns added to a model after a database was created are added in place."""
    inspector = inspect(engine)
    for table in Base.metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise RuntimeError(f"cannot add NOT NULL column {table.name}.{column.name}")
            ddl = column.type.compile(dialect=engine.dialect)
            with engine.begin() as conn:
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN {column.name} {ddl}'))
