"""The alert's confidence as the Beta prior: a new strategy is taken at its word, tilted by
the market model's edge, and marked down by its own losing record."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from nameko_services.brain.engine import BrainEngine
from shared.models import Signal
from shared.settings import load_settings
from tests.support.brain_fakes import FakeMarket, FakeTrack, constant_model


def _model(p_market: float, base_rate: float = 0.5):
    return dataclasses.replace(constant_model(p_market), base_rate=base_rate)


def _signal(confidence: float) -> Signal:
    return Signal(signal_id="s", idempotency_key="k", symbol="BTCUSDT", action="buy",
                  side="LONG", price=Decimal(60000), confidence=confidence,
                  received_at=datetime.now(UTC))


def _analyze(p_market: float, confidence: float, track: FakeTrack | None = None):
    market = FakeMarket()
    engine = BrainEngine(load_settings(), market, _model(p_market), track or FakeTrack(),
                         clock=lambda: market.now)
    return engine.analyze(_signal(confidence))


def test_confident_alert_on_a_market_without_edge_trades_at_its_own_confidence(secrets_env):
    decision = _analyze(p_market=0.5, confidence=0.8)

    assert decision.approved
    assert decision.analysis.sizing["p"] == pytest.approx(0.8)
    assert decision.analysis.features["prior_mean"] == pytest.approx(0.8)


def test_market_edge_tilts_the_claimed_confidence(secrets_env):
    with_edge = _analyze(p_market=0.6, confidence=0.7)
    against = _analyze(p_market=0.4, confidence=0.7)

    assert with_edge.analysis.sizing["p"] == pytest.approx(0.8)
    assert against.analysis.sizing["p"] == pytest.approx(0.6)
    assert not against.approved  # 0.6 -> final (0.95*0.6+0.05*0.7)*1.3 = 0.79 < 0.85


def test_losing_track_record_overrules_an_overconfident_strategy(secrets_env):
    decision = _analyze(p_market=0.5, confidence=0.9, track=FakeTrack(wins=0, losses=30))

    # (20 * 0.9 + 0) / (20 + 30) = 0.36
    assert decision.analysis.sizing["p"] == pytest.approx(0.36)
    assert "phoenix_score_below_threshold" in decision.analysis.reasons
