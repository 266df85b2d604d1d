"""Brain's track record kept from execute's ``position_closed`` records, end to end on real
Redis and a real SQLite/PostgreSQL database: execute's report written by the telemetry
writer, read through a consumer group as brain's stream entrypoint reads it, handled by
``BrainService.on_trade_event`` into brain's own table. Execute's ``positions`` table is
never read (it stays empty here)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest
import redis
from nameko.testing.services import worker_factory
from sqlalchemy import func, select, text
from sqlalchemy.orm import sessionmaker

from nameko_services.brain.engine import BrainEngine
from nameko_services.brain.track_record import (
    LEGACY_TABLE,
    TrackRecord,
    TrackRecordStore,
    import_legacy,
)
from nameko_services.execute import reports
from shared.db import PositionRow, make_engine
from shared.names import BRAIN_GROUP
from shared.records import Record
from shared.settings import Settings, load_settings
from shared.telemetry import TelemetryWriter
from tests.support.brain_fakes import FakeMarket, FakeTelemetry, constant_model

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/13"


@pytest.fixture
def settings(database_url: str, secrets_env) -> Settings:
    return load_settings(database={"url": database_url}, redis_streams={"url": REDIS_URL})


@pytest.fixture
def stream() -> Iterator[tuple[redis.Redis, str]]:
    """A trade stream of this test's own, in the shared test Redis."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    name = f"trade:stream:test-{uuid.uuid4().hex}"
    yield client, name
    client.delete(name)
    client.close()


def _brain(settings: Settings, store: TrackRecordStore):  # type: ignore[no-untyped-def]
    from nameko_services.brain.service import BrainService

    engine = BrainEngine(settings, FakeMarket(), constant_model(0.7), store)
    return worker_factory(BrainService, config=settings, engine=engine,
                          telemetry=FakeTelemetry())


def _report_close(writer: TelemetryWriter, name: str, signal_id: str, strategy: str | None,
                  pnl: str, side: str = "LONG", symbol: str = "BTCUSDT") -> None:
    """What execute sends when it books a position closed."""
    report = reports.position_closed(signal_id, symbol, "take_profit", {
        "side": side, "strategy": strategy, "exit_price": "61200", "realized_pnl": pnl})
    for record in report.records:
        writer.emit(name, record)


def _consume(client: redis.Redis, name: str, brain, group: str = BRAIN_GROUP,  # type: ignore[no-untyped-def]
             start: str = "0") -> int:
    """Read the stream as brain's @stream_consume entrypoint does and hand each entry to
    ``on_trade_event``; returns how many entries it saw."""
    try:
        client.xgroup_create(name, group, id=start, mkstream=True)
    except redis.ResponseError as exc:
        assert "BUSYGROUP" in str(exc)
    seen = 0
    while replies := client.xreadgroup(group, "test-consumer", {name: ">"}, count=50):
        for _, entries in replies:
            for entry_id, fields in entries:
                brain.on_trade_event(entry_id, fields)
                client.xack(name, group, entry_id)
                seen += 1
    return seen


def test_closes_reported_by_execute_become_wins_and_losses_per_strategy_symbol_side(
        settings, stream):
    client, name = stream
    store = TrackRecordStore.from_settings(settings, ttl=0.0)
    writer = TelemetryWriter(settings, client, None, topics={})
    for sid, strategy, pnl, side in [("a1", "ema", "12.5", "LONG"), ("a2", "ema", "-8", "LONG"),
                                     ("a3", "ema", "3", "LONG"), ("b1", "rsi", "40", "LONG"),
                                     ("a5", "ema", "5", "SHORT"), ("z0", "ema", "0", "LONG"),
                                     ("ad", None, "9", "LONG")]:
        _report_close(writer, name, sid, strategy, pnl, side)
    writer.emit(name, Record("entry_filled", {"symbol": "BTCUSDT"}, "a9"))  # not a close

    assert _consume(client, name, _brain(settings, store)) == 8

    # a break-even close is not a win; a position execute adopted (no strategy) counts nowhere
    assert store.get("ema", "BTCUSDT", "LONG") == TrackRecord(wins=2, losses=2)
    assert store.get("rsi", "BTCUSDT", "LONG") == TrackRecord(wins=1, losses=0)
    assert store.get("ema", "BTCUSDT", "SHORT") == TrackRecord(wins=1, losses=0)
    assert store.get("ema", "ETHUSDT", "LONG") == TrackRecord(wins=0, losses=0)
    with sessionmaker(make_engine(settings))() as s:  # brain never needed execute's book
        assert s.scalar(select(func.count()).select_from(PositionRow)) == 0


def test_a_replayed_stream_or_a_repeated_close_is_booked_once(settings, stream):
    client, name = stream
    store = TrackRecordStore.from_settings(settings, ttl=0.0)
    writer = TelemetryWriter(settings, client, None, topics={})
    brain = _brain(settings, store)
    _report_close(writer, name, "c1", "ema", "7")
    _report_close(writer, name, "c2", "ema", "-3")
    _consume(client, name, brain)

    # a second brain process's group from the stream's start, and execute reporting c1 twice
    _report_close(writer, name, "c1", "ema", "7")
    assert _consume(client, name, brain, group="brain_processors_replay") == 3

    assert store.get("ema", "BTCUSDT", "LONG") == TrackRecord(wins=1, losses=1)


def test_a_close_booked_by_one_brain_process_is_seen_by_another(settings, stream):
    client, name = stream
    first = TrackRecordStore.from_settings(settings, ttl=0.0)
    second = TrackRecordStore.from_settings(settings, ttl=0.0)
    assert second.get("ema", "BTCUSDT", "LONG") == TrackRecord(0, 0)
    _report_close(TelemetryWriter(settings, client, None, topics={}), name, "d1", "ema",
                  "1.25")

    _consume(client, name, _brain(settings, first))

    assert second.get("ema", "BTCUSDT", "LONG") == TrackRecord(1, 0)


def test_the_cache_is_refreshed_by_a_close_this_process_books(settings, stream):
    client, name = stream
    store = TrackRecordStore.from_settings(settings, ttl=3600.0)
    assert store.get("ema", "BTCUSDT", "LONG") == TrackRecord(0, 0)  # cached for an hour
    _report_close(TelemetryWriter(settings, client, None, topics={}), name, "e1", "ema",
                  str(Decimal("-0.5")))

    _consume(client, name, _brain(settings, store))

    assert store.get("ema", "BTCUSDT", "LONG") == TrackRecord(0, 1)


def test_the_upgrade_step_carries_the_earlier_closes_over_once(settings):
    engine = make_engine(settings)
    with engine.begin() as conn:  # what the previous version left behind
        conn.execute(text(f"CREATE TABLE {LEGACY_TABLE} (signal_id VARCHAR(64) PRIMARY KEY, "
                          "strategy VARCHAR(64), symbol VARCHAR(20), side VARCHAR(8))"))
        conn.execute(text(f"INSERT INTO {LEGACY_TABLE} VALUES ('o1', 'ema', 'BTCUSDT', 'LONG'),"
                          " ('o2', 'ema', 'BTCUSDT', 'LONG'), ('o3', 'ema', 'BTCUSDT', 'LONG')"))
    with sessionmaker(engine)() as s:
        s.add_all([_position("o1", "12.5"), _position("o2", "-8"),
                   _position("o3", None, status="open"), _position("zz", "9")])
        s.commit()

    first, again = import_legacy(settings), import_legacy(settings)

    assert (first, again) == (2, 0)
    store = TrackRecordStore.from_settings(settings, ttl=0.0)
    assert store.get("ema", "BTCUSDT", "LONG") == TrackRecord(wins=1, losses=1)


def test_the_upgrade_step_on_a_new_database_does_nothing(settings):
    assert import_legacy(settings) == 0


def _position(signal_id: str, pnl: str | None, status: str = "closed") -> PositionRow:
    return PositionRow(signal_id=signal_id, symbol="BTCUSDT", side="LONG",
                       quantity=Decimal("0.01"), entry_price=Decimal(60000), leverage=20,
                       margin=Decimal(30), status=status,
                       realized_pnl=None if pnl is None else Decimal(pnl))
