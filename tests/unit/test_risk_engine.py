from __future__ import annotations

from decimal import Decimal as D

import pytest

from nameko_services.risk.engine import OpenPosition, RiskEngine, Snapshot
from shared.models import TradeIntent
from shared.money import DEFAULT_BRACKETS
from shared.settings import load_settings


def _intent(**over) -> TradeIntent:
    fields = dict(signal_id="s", idempotency_key="k", symbol="BTCUSDT", side="LONG",
                  quantity=D("0.5"), reference_price=D(60000), alert_price=D(60000),
                  leverage=20, stop_loss=D(58800), take_profit=D(61200), margin=D(1500))
    fields.update(over)
    return TradeIntent(**fields)


def _snap(**over) -> Snapshot:
    fields = dict(state="ACTIVE", equity=D(10000), available=D(10000), positions=(),
                  last_price=D(60000), price_age_ms=100, min_quantity=D("0.001"),
                  min_notional=D(100), brackets=DEFAULT_BRACKETS["BTCUSDT"])
    fields.update(over)
    return Snapshot(**fields)


@pytest.fixture
def engine(secrets_env):
    return RiskEngine(load_settings())


def test_sane_intent_is_approved_with_every_number_shown(engine):
    decision = engine.check(_intent(), _snap())

    assert decision.approved and decision.reasons == ()
    assert D(decision.checks["margin"]) == D(1500)
    assert D(decision.checks["max_margin"]) == D(1500)
    assert decision.liquidation_price is not None
    assert decision.liquidation_price < D(58800)


@pytest.mark.parametrize("over,snap,code", [
    ({"symbol": "XRPUSDT"}, {}, "symbol_not_allowed"),
    ({"leverage": 50}, {}, "leverage_exceeded"),
    ({"margin_mode": "CROSSED"}, {}, "margin_mode_not_isolated"),
    ({"quantity": D("0.0001")}, {}, "quantity_below_minimum"),
    ({"quantity": D("0.001")}, {}, "below_min_notional"),
    ({"stop_loss": D(61000)}, {}, "stop_loss_missing_or_wrong_side"),
    ({"stop_loss": None}, {}, "stop_loss_missing_or_wrong_side"),
    ({"take_profit": D(59000)}, {}, "take_profit_missing_or_wrong_side"),
    ({}, {"available": D(1000)}, "insufficient_margin"),
    ({"quantity": D("0.6")}, {}, "position_size_exceeded"),
    ({}, {"positions": [OpenPosition("BTCUSDT", "LONG", D(10), D(200))]},
     "position_already_open"),
    ({}, {"positions": [OpenPosition(f"S{i}", "LONG", D(1), D(20)) for i in range(5)]},
     "max_open_positions"),
    ({}, {"price_age_ms": 120_000}, "stale_market_data"),
    ({"alert_price": D(70000)}, {}, "price_out_of_band"),
    ({}, {"state": "HALTED"}, "halted"),
    ({}, {"state": "REDUCING"}, "reducing"),
])
def test_each_violation_is_denied_with_its_stable_code(engine, over, snap, code):
    decision = engine.check(_intent(**over), _snap(**snap))

    assert not decision.approved
    assert code in decision.reasons


def test_stop_too_close_to_liquidation_is_denied(engine):
    # a 4.5 % stop at 20x sits almost on the liquidation price (~4.6 % away)
    decision = engine.check(_intent(stop_loss=D(57300)), _snap())

    assert "liquidation_before_stop" in decision.reasons
    assert D(decision.checks["liquidation_room"]) < D(decision.checks["required_room"])


def test_short_mirror_image_is_approved(engine):
    decision = engine.check(_intent(side="SHORT", stop_loss=D(61200), take_profit=D(58800)),
                            _snap())

    assert decision.approved
    assert decision.liquidation_price > D(61200)
