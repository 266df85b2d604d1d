"""SQL persistence (SQLAlchemy 2): SQLite file by default, PostgreSQL when configured.

The schema is created on first use (``create_all`` is idempotent). Money is
:class:`ExactDecimal`: ``NUMERIC(28, 12)`` on PostgreSQL, exact decimal text on SQLite
(whose NUMERIC goes through a float: 60000.1 read back as 60000.099999999999); databases
created with the old NUMERIC columns are rebuilt in place once (:func:`_migrate_sqlite_money`).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    DateTime,
    Integer,
    Numeric,
    String,
    Table,
    Text,
    TypeDecorator,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.types import TypeEngine

from shared.settings import Settings


class ExactDecimal(TypeDecorator[Decimal]):
    """A Decimal stored exactly: ``NUMERIC(p, s)`` where the database has exact numerics,
    fixed-point text on SQLite (TEXT affinity, so SQLite never turns it into a float).

    Values are rounded to ``scale`` places on both, so both read back the same Decimal.
    On SQLite the text is canonical fixed-point (``-12.400000000000``): comparing a
    column with 0 in SQL stays correct; any other SQL arithmetic or ordering on it does not
    (do it in Python).
    """

    impl = Numeric
    cache_ok = True

    def __init__(self, precision: int = 28, scale: int = 12) -> None:
        super().__init__(precision=precision, scale=scale, asdecimal=True)
        self.precision = precision
        self.scale = scale
        self._quantum = Decimal(1).scaleb(-scale)

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(self.precision + 2))
        return dialect.type_descriptor(Numeric(self.precision, self.scale, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        number = value if isinstance(value, Decimal) else Decimal(str(value))
        if not number.is_finite():
            raise ValueError(f"not a finite amount: {value!r}")
        number = number.quantize(self._quantum)
        return f"{number:f}" if dialect.name == "sqlite" else number

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if isinstance(value, float):  # a row SQLite still holds as REAL
            value = repr(value)
        return Decimal(str(value)).quantize(self._quantum)


PRICE = ExactDecimal(28, 12)


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
    # the intent's strategy, carried on position_closed (None: adopted, or booked before)
    strategy: Mapped[str | None] = mapped_column(String(64), nullable=True)
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
            if engine.dialect.name == "sqlite":
                _migrate_sqlite_money(engine)
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


_FLOAT_AFFINITY = ("NUMERIC", "DECIMAL", "REAL", "FLOAT", "DOUBLE")


def _float_money_columns(inspector: Any, table: Table) -> set[str]:
    """ExactDecimal columns of ``table`` a SQLite database still declares NUMERIC."""
    declared = {c["name"]: str(c["type"]).upper() for c in inspector.get_columns(table.name)}
    return {c.name for c in table.columns
            if isinstance(c.type, ExactDecimal)
            and declared.get(c.name, "").startswith(_FLOAT_AFFINITY)}


def _migrate_sqlite_money(engine: Engine) -> None:
    """Rebuild each table whose money columns have NUMERIC (float) affinity, in one
    ``BEGIN IMMEDIATE`` transaction per table (a second process waits, then finds it done).

    Old values become their shortest text (SQLite's ``CAST(real AS TEXT)``: 15 significant
    digits, so 60000.099999999999 becomes 60000.1, the amount that was written).
    """
    for table in Base.metadata.sorted_tables:
        if not _float_money_columns(inspect(engine), table):
            continue
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                _rebuild_with_exact_money(conn, table)
            except Exception:
                conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT")


def _rebuild_with_exact_money(conn: Any, table: Table) -> None:
    inspector = inspect(conn)
    money = _float_money_columns(inspector, table)
    if not money:  # another process migrated it while we waited for the lock
        return
    present = {c["name"] for c in inspector.get_columns(table.name)}
    old = f"{table.name}__float_money"
    conn.exec_driver_sql(f'ALTER TABLE "{table.name}" RENAME TO "{old}"')
    for index in inspector.get_indexes(old):
        conn.exec_driver_sql(f'DROP INDEX "{index["name"]}"')
    table.create(conn)
    cols = [c.name for c in table.columns if c.name in present]
    select = ", ".join(f'CAST("{c}" AS TEXT)' if c in money else f'"{c}"' for c in cols)
    names = ", ".join(f'"{c}"' for c in cols)
    conn.exec_driver_sql(f'INSERT INTO "{table.name}" ({names}) SELECT {select} FROM "{old}"')
    conn.exec_driver_sql(f'DROP TABLE "{old}"')
