"""The strategies' track record read from closed trades in a real SQLite/PostgreSQL database."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy.orm import sessionmaker

from nameko_services.brain.track_record import Record, TrackRecord
from shared.db import PositionRow, make_engine
from shared.settings import load_settings


@pytest.fixture
def track(database_url: str, secrets_env, monkeypatch) -> tuple[TrackRecord, sessionmaker]:
    monkeypatch.setenv("PHOENIX__DATABASE__URL", database_url)
    settings = load_settings()
    return TrackRecord.from_settings(settings, ttl=0.0), sessionmaker(make_engine(settings))


def _position(signal_id: str, pnl: str | None, status: str = "closed", side: str = "LONG",
              symbol: str = "BTCUSDT") -> PositionRow:
    return PositionRow(signal_id=signal_id, symbol=symbol, side=side, quantity=Decimal("0.01"),
                       entry_price=Decimal(60000), leverage=20, margin=Decimal(30),
                       status=status, realized_pnl=None if pnl is None else Decimal(pnl))


def test_wins_and_losses_are_counted_per_strategy_symbol_and_side(track):
    record, sessions = track
    for sid, strategy in [("a1", "ema"), ("a2", "ema"), ("a3", "ema"), ("b1", "rsi"),
                          ("a4", "ema"), ("a5", "ema")]:
        record.remember(sid, strategy, "BTCUSDT", "LONG")
    with sessions() as s:
        s.add_all([_position("a1", "12.5"), _position("a2", "-8"), _position("a3", "3"),
                   _position("b1", "40"), _position("a4", None, status="open"),
                   _position("a5", "5", side="SHORT"), _position("zz", "9")])
        s.commit()

    assert record.get("ema", "BTCUSDT", "LONG") == Record(wins=2, losses=1)
    assert record.get("rsi", "BTCUSDT", "LONG") == Record(wins=1, losses=0)
    assert record.get("ema", "ETHUSDT", "LONG") == Record(wins=0, losses=0)


def test_remembering_the_same_signal_twice_is_harmless(track):
    record, _ = track

    record.remember("dup", "ema", "BTCUSDT", "LONG")
    record.remember("dup", "ema", "BTCUSDT", "LONG")

    assert record.get("ema", "BTCUSDT", "LONG") == Record(wins=0, losses=0)
