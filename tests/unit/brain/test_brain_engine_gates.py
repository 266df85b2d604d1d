"""The three gates, Kelly sizing and the audit fields of BrainEngine, with fakes at the edges."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from nameko_services.brain.engine import BrainEngine, kelly_f, margin_fraction
from nameko_services.brain.features import FEATURE_NAMES
from nameko_services.brain.model import PhoenixModel
from shared.models import Signal
from shared.settings import load_settings
from tests.support.brain_fakes import FakeMarket, FakeTrack, constant_model


def _signal(confidence: float = 0.9, side: str | None = "LONG", action: str = "buy",
            strategy: str = "ema-cross") -> Signal:
    return Signal(signal_id="sig-1", idempotency_key="id:1", symbol="BTCUSDT", action=action,
                  side=side, price=Decimal(60000), confidence=confidence, strategy=strategy,
                  received_at=datetime.now(UTC))


def _engine(settings, p: float, market: FakeMarket | None = None,
            track: FakeTrack | None = None) -> BrainEngine:
    market = market or FakeMarket()
    return BrainEngine(settings, market, constant_model(p), track or FakeTrack(),
                       clock=lambda: market.now)


def _no_prior():
    """These tests drive p directly: the market model alone is the prior mean."""
    return load_settings(phoenix_95={"confidence_prior": False})


@pytest.fixture
def settings(secrets_env):
    return load_settings(phoenix_95={"confidence_prior": False})


def test_strong_probability_passes_all_gates_and_is_sized_by_fractional_kelly(settings):
    engine = _engine(settings, 0.7)

    decision = engine.analyze(_signal(0.9))

    # f* = 0.7 - 0.3/1 = 0.4; margin = 0.2 * 0.4 * 10 000 = 800; 800 * 20 / 60 000 = 0.2666
    assert decision.approved
    assert decision.analysis.sizing["kelly_f"] == pytest.approx(0.4)
    assert decision.analysis.margin_fraction == pytest.approx(0.08)
    assert decision.intent is not None and decision.intent.quantity == Decimal("0.266")
    assert decision.analysis.sizing["bound_by"] == ["step_size"]
    assert (decision.intent.stop_loss, decision.intent.take_profit) == (Decimal("58800.0"),
                                                                        Decimal("61200.0"))


def test_each_gate_fails_with_its_own_reason_in_order(settings):
    weak = _engine(settings, 0.3).analyze(_signal(0.3))
    middling = _engine(settings, 0.55).analyze(_signal(0.9))

    assert weak.analysis.reasons[:2] == ("phoenix_score_below_threshold",
                                         "final_confidence_below_execute_threshold")
    assert middling.analysis.reasons == ("final_confidence_below_execute_threshold",)
    assert weak.intent is None and middling.intent is None


def test_alert_below_min_confidence_is_refused_before_any_market_read(settings):
    market = FakeMarket()
    engine = _engine(settings, 0.9, market)

    decision = engine.analyze(_signal(0.2))

    assert decision.analysis.reasons == ("confidence_below_min",)
    assert decision.analysis.gates["min_confidence"] == {"value": 0.2, "threshold": 0.25,
                                                         "passed": False}
    assert decision.intent is None
    assert market.kline_calls == []


def test_final_confidence_blends_model_and_alert_then_boosts(settings):
    decision = _engine(settings, 0.6).analyze(_signal(0.8))

    expected = min(1.0, (0.95 * 0.6 + 0.05 * 0.8) * 1.3)
    assert decision.analysis.final_confidence == pytest.approx(expected, abs=1e-6)
    gates = decision.analysis.gates
    assert gates["phoenix_threshold"] == {"value": pytest.approx(0.6), "threshold": 0.45,
                                          "passed": True}
    assert gates["execute_threshold"]["passed"] is False


def test_probability_without_edge_is_refused_as_no_edge(settings, monkeypatch):
    monkeypatch.setenv("PHOENIX__PHOENIX_95__EXECUTE_THRESHOLD", "0.5")

    decision = _engine(_no_prior(), 0.48).analyze(_signal(0.9))

    assert decision.analysis.reasons == ("no_edge",)
    assert decision.analysis.sizing["kelly_f"] < 0


def test_fixed_sizing_skips_the_edge_requirement_but_keeps_caps_and_rounding(monkeypatch,
                                                                             secrets_env):
    monkeypatch.setenv("PHOENIX__PHOENIX_95__EXECUTE_THRESHOLD", "0.5")
    monkeypatch.setenv("PHOENIX__TRADING__SIZING", "fixed")

    decision = _engine(_no_prior(), 0.48).analyze(_signal(0.9))

    # 5 % of 10 000 = 500 margin; 500 * 20 / 60 000 = 0.1666 -> 0.166
    assert decision.approved
    assert decision.intent is not None and decision.intent.quantity == Decimal("0.166")
    assert decision.analysis.sizing["mode"] == "fixed"


def test_kelly_stake_is_capped_at_max_position_size(settings):
    decision = _engine(settings, 0.95).analyze(_signal(0.9))

    # f* = 0.9 -> 0.18 of equity, capped at 0.15: 1 500 margin -> 30 000 notional = 0.5 BTC
    assert decision.analysis.margin_fraction == pytest.approx(0.15)
    assert "max_position_size" in decision.analysis.sizing["bound_by"]
    assert decision.intent is not None and decision.intent.quantity == Decimal("0.500")


def test_size_under_the_exchange_minimum_is_below_min_notional(settings):
    decision = _engine(settings, 0.7, FakeMarket(equity="30")).analyze(_signal(0.9))

    # 0.08 * 30 = 2.4 margin -> 48 USDT notional -> 0.0008 BTC -> 0.000 < min 0.001
    assert decision.analysis.reasons == ("below_min_notional",)
    assert decision.intent is None
    assert decision.analysis.sizing["quantity"] == "0"


@pytest.mark.parametrize("p,b,expected", [(0.6, 1.0, 0.2), (0.5, 1.0, 0.0), (0.4, 2.0, 0.1),
                                          (0.25, 1.0, -0.5)])
def test_kelly_fraction_worked_examples(p, b, expected):
    assert kelly_f(p, b) == pytest.approx(expected)


# the settings fixture is frozen: sharing it across generated inputs is safe
SHARED_FIXTURE = hyp_settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


@SHARED_FIXTURE
@given(p=st.floats(0.0, 1.0))
def test_margin_fraction_never_exceeds_the_cap_nor_goes_negative(settings, p):
    f_star, fraction, bound_by = margin_fraction(settings, p)

    assert 0.0 <= fraction <= settings.trading.max_position_size
    assert (fraction == settings.trading.max_position_size) or not bound_by
    assert fraction == pytest.approx(min(0.15, max(0.0, 0.2 * f_star)))


@SHARED_FIXTURE
@given(equity=st.decimals(min_value=1, max_value=10_000_000, places=2),
       p=st.floats(0.66, 0.99))
def test_quantity_is_on_the_step_and_its_margin_within_the_cap(settings, equity, p):
    market = FakeMarket(equity=str(equity))
    decision = _engine(settings, p, market).analyze(_signal(1.0))

    if decision.intent is None:
        assert decision.analysis.reasons == ("below_min_notional",)
        return
    qty = decision.intent.quantity
    assert qty % Decimal("0.001") == 0
    assert qty * market.price / 20 <= equity * Decimal("0.15")


def test_close_is_not_an_entry(settings):
    decision = _engine(settings, 0.9).analyze(_signal(0.9, side=None, action="close"))

    assert decision.analysis.reasons == ("not_an_entry",)


def test_audit_carries_features_model_version_and_track_record(settings):
    engine = _engine(settings, 0.6, track=FakeTrack(wins=3, losses=1))

    analysis = engine.analyze(_signal(0.9)).analysis

    assert set(FEATURE_NAMES) <= set(analysis.features)
    assert (analysis.features["track_wins"], analysis.features["track_losses"]) == (3.0, 1.0)
    assert analysis.model_version == "constant-0.6"
    # Beta-binomial: (20 * 0.6 + 3) / (20 + 4)
    assert analysis.model_probability == pytest.approx(15 / 24, abs=1e-6)


def test_score_is_reproducible_from_the_recorded_features(settings):
    model = PhoenixModel.load()
    market = FakeMarket()
    engine = BrainEngine(settings, market, model, FakeTrack(2, 5), clock=lambda: market.now)

    analysis = engine.analyze(_signal(0.9)).analysis

    assert model.probability(analysis.features) == pytest.approx(analysis.model_probability,
                                                                 abs=1e-6)
    assert analysis.model_version == model.version


def test_klines_of_two_timeframes_are_fetched(settings, fake_market):
    engine = BrainEngine(settings, fake_market, PhoenixModel.load(), FakeTrack(),
                         clock=lambda: fake_market.now)

    engine.analyze(_signal())

    assert {tf for _, tf, _ in fake_market.kline_calls} == {"5m", "1h"}


def test_too_little_history_is_rejected_with_a_reason(settings):
    from nameko_services.brain.training import synthetic_market

    market = FakeMarket(synthetic_market(1, seed=1))
    engine = BrainEngine(settings, market, PhoenixModel.load(), FakeTrack(),
                         clock=lambda: market.now)

    assert engine.analyze(_signal()).analysis.reasons == ("insufficient_market_data",)


def test_stale_market_state_rejects_without_analysing(settings):
    engine = _engine(settings, 0.9, FakeMarket(stale_market=True))

    decision = engine.analyze(_signal(0.9))

    assert decision.intent is None
    assert decision.analysis.reasons == ("market_data_stale",)
    assert decision.analysis.features == {} and decision.analysis.gates == {}


def test_stale_account_state_rejects_at_sizing(settings):
    engine = _engine(settings, 0.9, FakeMarket(stale_account=True))

    decision = engine.analyze(_signal(0.9))

    assert decision.intent is None
    assert decision.analysis.reasons == ("account_state_stale",)
    assert "stale" in decision.analysis.sizing
