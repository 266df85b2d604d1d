"""Money in the database is exact on SQLite and PostgreSQL, and an SQLite database created
with the old float-backed NUMERIC columns is migrated in place, keeping its rows."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import MetaData, Numeric, create_engine, func, insert, inspect, select
from sqlalchemy.exc import IntegrityError

from shared.db import Base, ExactDecimal, OrderRow, PositionRow, make_sessionmaker
from shared.settings import load_settings

pytestmark = pytest.mark.integration

AMOUNTS = {
    "quantity": Decimal("0.001"),
    "trigger_price": Decimal("60000.1"),
    "avg_price": Decimal("1234567890123456.123456789012"),  # 28 significant digits
    "fee": Decimal("0.000012345678"),
}


def _order(cid: str = "cid-1", **amounts: Decimal) -> OrderRow:
    return OrderRow(client_order_id=cid, signal_id="s1", symbol="BTCUSDT", kind="entry",
                    side="BUY", order_type="MARKET", **(amounts or AMOUNTS))


def test_money_reads_back_exactly_what_was_written(secrets_env, database_url):
    sessions = make_sessionmaker(load_settings(database={"url": database_url}))
    with sessions.begin() as s:
        s.add(_order())

    with sessions() as s:
        row = s.scalars(select(OrderRow)).one()
        got = {name: getattr(row, name) for name in AMOUNTS}

    assert got == AMOUNTS
    assert all(isinstance(v, Decimal) for v in got.values())


def test_comparing_money_with_zero_in_sql_counts_wins_and_losses(secrets_env, database_url):
    # brain's track record counts wins with ``realized_pnl > 0`` in SQL
    sessions = make_sessionmaker(load_settings(database={"url": database_url}))
    pnls = ["-12.4", "0", "0.000000000001", "-0.5", "12.4", "9", "10"]
    with sessions.begin() as s:
        for i, pnl in enumerate(pnls):
            s.add(PositionRow(signal_id=f"s{i}", symbol="BTCUSDT", side="LONG",
                              quantity=Decimal(1), entry_price=Decimal(1), leverage=20,
                              margin=Decimal(1), status="closed", realized_pnl=Decimal(pnl)))

    with sessions() as s:
        won = s.scalar(select(func.count()).where(PositionRow.realized_pnl > 0))

    assert won == 4


def _old_float_schema(url: str) -> MetaData:
    """The schema as it was before ExactDecimal: money in NUMERIC(28, 12) columns."""
    old = MetaData()
    for table in Base.metadata.sorted_tables:
        copy = table.to_metadata(old)
        for column in copy.columns:
            if isinstance(column.type, ExactDecimal):
                column.type = Numeric(28, 12)
    engine = create_engine(url)
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(old.tables["orders"]).values(
            client_order_id="old-1", signal_id="s0", symbol="BTCUSDT", kind="entry",
            side="BUY", order_type="MARKET", quantity=Decimal("0.003"),
            trigger_price=Decimal("60000.1"), fee=None, status="filled"))
    engine.dispose()
    return old


def test_an_old_sqlite_database_is_migrated_in_place_and_keeps_its_rows(secrets_env, tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    _old_float_schema(url)
    settings = load_settings(database={"url": url})

    sessions = make_sessionmaker(settings)
    make_sessionmaker(settings)  # a second start finds nothing left to migrate

    with sessions() as s:
        old_row = s.scalars(select(OrderRow).where(OrderRow.client_order_id == "old-1")).one()
    assert (old_row.quantity, old_row.trigger_price, old_row.fee) == (
        Decimal("0.003"), Decimal("60000.1"), None)
    with sessions.begin() as s:
        s.add(_order("new-1"))
    with sessions() as s:
        new_row = s.scalars(select(OrderRow).where(OrderRow.client_order_id == "new-1")).one()
    assert {name: getattr(new_row, name) for name in AMOUNTS} == AMOUNTS
    # indexes and the unique client order id survived the rebuild
    indexes = {ix["name"] for ix in inspect(sessions.kw["bind"]).get_indexes("orders")}
    assert "ix_orders_client_order_id" in indexes and "ix_orders_signal_id" in indexes
    with pytest.raises(IntegrityError), sessions.begin() as s:
        s.add(_order("old-1"))
