"""Daily realised PnL and drawdown from the equity peak, in SQL, with a fixed clock."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from nameko_services.risk.ledger import Ledger
from shared.db import Base

DAY = 1_795_600_000.0  # 2026-11-25 10:26 UTC


class Clock:
    def __init__(self) -> None:
        self.now = DAY

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sessions(tmp_path) -> sessionmaker:
    engine = create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    Base.metadata.create_all(engine)
    return sessionmaker(engine, expire_on_commit=False)


def test_first_observation_of_the_day_is_its_start(sessions: sessionmaker) -> None:
    ledger = Ledger(sessions, Clock())

    view = ledger.observe(D(10000), D(10000))

    assert view.day == "2026-11-25" and view.daily_pnl == 0 and view.drawdown == 0


def test_realised_loss_is_the_wallet_change_since_the_start(sessions: sessionmaker) -> None:
    ledger = Ledger(sessions, Clock())
    ledger.observe(D(10000), D(10000))

    view = ledger.observe(D(9400), D(9400))

    assert view.daily_pnl == D(-600)
    assert view.daily_loss_ratio == D("0.06")


def test_gains_are_no_loss_and_raise_the_peak(sessions: sessionmaker) -> None:
    ledger = Ledger(sessions, Clock())
    ledger.observe(D(10000), D(10000))
    ledger.observe(D(10500), D(11000))

    view = ledger.observe(D(10500), D(9900))

    assert view.daily_loss_ratio == 0
    assert view.peak_equity == D(11000)
    assert view.drawdown == D(1100) / D(11000)


def test_new_day_starts_from_its_own_wallet_and_keeps_the_peak(
        sessions: sessionmaker) -> None:
    clock = Clock()
    ledger = Ledger(sessions, clock)
    ledger.observe(D(10000), D(12000))
    ledger.observe(D(9000), D(9000))
    clock.now += 86400

    view = ledger.observe(D(9000), D(9000))

    assert view.day == "2026-11-26" and view.daily_pnl == 0
    assert view.peak_equity == D(12000)


def test_state_survives_a_new_ledger_on_the_same_database(sessions: sessionmaker) -> None:
    Ledger(sessions, Clock()).observe(D(10000), D(10000))
    Ledger(sessions, Clock()).observe(D(9000), D(9000))

    view = Ledger(sessions, Clock()).view()

    assert view is not None and view.daily_pnl == D(-1000)


def test_rebase_accepts_the_current_numbers(sessions: sessionmaker) -> None:
    ledger = Ledger(sessions, Clock())
    ledger.observe(D(10000), D(10000))
    ledger.observe(D(8000), D(8000))

    view = ledger.rebase(D(8000), D(8000))

    assert view.daily_pnl == 0 and view.drawdown == 0
