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
    ({"symbol": "XRPUSDT"}, {}, "SYMBOL_NOT_ALLOWED"),
    ({"leverage": 50}, {}, "LEVERAGE_EXCEEDED"),
    ({"margin_mode": "CROSSED"}, {}, "MARGIN_MODE_NOT_ISOLATED"),
    ({"quantity": D("0.0001")}, {}, "QUANTITY_BELOW_MINIMUM"),
    ({"quantity": D("0.001")}, {}, "NOTIONAL_BELOW_MINIMUM"),
    ({"stop_loss": D(61000)}, {}, "STOP_LOSS_MISSING_OR_WRONG_SIDE"),
    ({"stop_loss": None}, {}, "STOP_LOSS_MISSING_OR_WRONG_SIDE"),
    ({"take_profit": D(59000)}, {}, "TAKE_PROFIT_MISSING_OR_WRONG_SIDE"),
    ({}, {"available": D(1000)}, "INSUFFICIENT_MARGIN"),
    ({"quantity": D("0.6")}, {}, "POSITION_SIZE_EXCEEDED"),
    ({}, {"positions": [OpenPosition("BTCUSDT", "LONG", D(10), D(200))]},
     "POSITION_ALREADY_OPEN"),
    ({}, {"positions": [OpenPosition(f"S{i}", "LONG", D(1), D(20)) for i in range(5)]},
     "MAX_OPEN_POSITIONS"),
    ({}, {"price_age_ms": 120_000}, "STALE_MARKET_DATA"),
    ({"alert_price": D(70000)}, {}, "PRICE_OUT_OF_BAND"),
    ({}, {"state": "HALTED"}, "TRADING_HALTED"),
    ({}, {"state": "REDUCING"}, "TRADING_REDUCING"),
])
def test_each_violation_is_denied_with_its_stable_code(engine, over, snap, code):
    decision = engine.check(_intent(**over), _snap(**snap))

    assert not decision.approved
    assert code in decision.reasons


def test_stop_too_close_to_liquidation_is_denied(engine):
    # a 4.5 % stop at 20x sits almost on the liquidation price (~4.6 % away)
    decision = engine.check(_intent(stop_loss=D(57300)), _snap())

    assert "LIQUIDATION_BEFORE_STOP" in decision.reasons
    assert D(decision.checks["liquidation_room"]) < D(decision.checks["required_room"])


def test_short_mirror_image_is_approved(engine):
    decision = engine.check(_intent(side="SHORT", stop_loss=D(61200), take_profit=D(58800)),
                            _snap())

    assert decision.approved
    assert decision.liquidation_price > D(61200)
