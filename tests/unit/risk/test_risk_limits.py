"""The configured account caps of the pure engine: exposure, reservations, daily loss,
drawdown, price age and band."""

from __future__ import annotations

from decimal import Decimal as D
from typing import Any

import pytest

from nameko_services.risk.engine import OpenPosition, RiskEngine, Snapshot, breaches
from shared.models import TradeIntent
from shared.money import DEFAULT_BRACKETS
from shared.settings import load_settings


def _intent(**over: Any) -> TradeIntent:
    fields: dict[str, Any] = dict(
        signal_id="s", idempotency_key="k", symbol="BTCUSDT", side="LONG", quantity=D("0.5"),
        reference_price=D(60000), alert_price=D(60000), leverage=20, stop_loss=D(58800),
        take_profit=D(61200), margin=D(1500))
    fields.update(over)
    return TradeIntent(**fields)


def _snap(**over: Any) -> Snapshot:
    fields: dict[str, Any] = dict(
        state="ACTIVE", equity=D(10000), available=D(10000), positions=(),
        last_price=D(60000), price_age_ms=100, min_quantity=D("0.001"), min_notional=D(100),
        brackets=DEFAULT_BRACKETS["BTCUSDT"])
    fields.update(over)
    return Snapshot(**fields)


def _engine(**risk: Any) -> RiskEngine:
    return RiskEngine(load_settings(risk=risk) if risk else load_settings())


@pytest.mark.parametrize("risk,snap,code", [
    ({"max_total_exposure": 5.0},
     {"positions": [OpenPosition("ETHUSDT", "LONG", D(1000), D(21000))]},
     "max_exposure_exceeded"),
    ({"max_total_exposure": 5.0}, {"reserved_notional": D(21000)}, "max_exposure_exceeded"),
    ({}, {"reserved_count": 5}, "max_open_positions"),
    ({}, {"reserved_symbols": frozenset({"BTCUSDT"})}, "position_already_open"),
    ({}, {"reserved_margin": D(9000)}, "insufficient_margin"),
    ({"max_daily_loss": 0.05}, {"daily_loss_ratio": D("0.05")}, "daily_loss_limit"),
    ({"max_drawdown": 0.2}, {"drawdown": D("0.25")}, "max_drawdown"),
    ({"max_price_age_ms": 5000}, {"price_age_ms": 6000}, "stale_market_data"),
    ({"price_band": 0.01}, {"last_price": D(60700)}, "price_out_of_band"),
])
def test_configured_cap_denies_with_its_code(secrets_env: dict[str, str], risk: dict[str, Any],
                                             snap: dict[str, Any], code: str) -> None:
    decision = _engine(**risk).check(_intent(), _snap(**snap))

    assert not decision.approved
    assert code in decision.reasons


def test_numbers_behind_the_account_caps_are_shown(secrets_env: dict[str, str]) -> None:
    decision = _engine().check(_intent(), _snap(reserved_notional=D(600), reserved_count=1))

    assert decision.approved
    assert D(decision.checks["exposure"]) == D(600)
    assert D(decision.checks["max_exposure"]) == D(150000)
    assert decision.checks["reserved_positions"] == 1


def test_only_account_breaches_call_for_a_halt() -> None:
    assert breaches(["max_drawdown", "stale_market_data", "daily_loss_limit"]) == (
        "max_drawdown", "daily_loss_limit")
    assert breaches(["insufficient_margin"]) == ()
