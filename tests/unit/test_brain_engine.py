from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from nameko_services.brain.engine import BrainEngine, SizingError, features_from_closes
from shared.models import Signal
from shared.settings import load_settings


class FakeMarket:
    def __init__(self, closes: list[float], price: str = "60000", equity: str = "10000"):
        self._closes, self._price, self._equity = closes, Decimal(price), Decimal(equity)

    def closes(self, symbol):
        return self._closes

    def last_price(self, symbol):
        return self._price

    def equity(self):
        return self._equity

    def tick_size(self, symbol):
        return Decimal("0.1")

    def amount_to_precision(self, symbol, quantity):
        return (quantity / Decimal("0.001")).to_integral_value(rounding="ROUND_DOWN") * Decimal(
            "0.001")


def _signal(confidence: float = 0.8, side: str | None = "LONG", action: str = "buy") -> Signal:
    return Signal(signal_id="sig-1", idempotency_key="id:1", symbol="BTCUSDT", action=action,
                  side=side, price=Decimal(60000), confidence=confidence,
                  received_at=datetime.now(UTC))


FLAT = [60000.0] * 60
RISING = [60000.0 * (1 + 0.0005 * i) for i in range(60)]


@pytest.fixture
def settings(secrets_env):
    return load_settings()


def test_confident_signal_passes_all_three_gates_and_is_sized_by_capped_kelly(settings):
    engine = BrainEngine(settings, FakeMarket(FLAT))

    analysis = engine.analyze(_signal(0.8))

    assert analysis.decision == "approved"
    assert analysis.final_confidence >= settings.phoenix_95.execute_threshold
    assert analysis.margin_fraction == pytest.approx(settings.trading.max_position_size)


def test_each_gate_has_its_own_reason_code(settings):
    engine = BrainEngine(settings, FakeMarket(FLAT))

    weak = engine.analyze(_signal(0.2))
    middling = engine.analyze(_signal(0.6))

    assert weak.reasons[:3] == ("confidence_below_min", "phoenix_score_below_threshold",
                                "final_confidence_below_execute_threshold")
    assert middling.reasons == ("final_confidence_below_execute_threshold",)


def test_trend_agreement_raises_the_probability_of_a_long_and_lowers_a_short(settings):
    engine = BrainEngine(settings, FakeMarket(RISING))

    long = engine.analyze(_signal(0.7, "LONG"))
    short = engine.analyze(_signal(0.7, "SHORT", "sell"))

    assert long.model_probability > 0.7 > short.model_probability
    assert features_from_closes(RISING).trend > 0


def test_intent_uses_equity_margin_leverage_and_two_percent_brackets(settings):
    engine = BrainEngine(settings, FakeMarket(FLAT))
    signal = _signal(0.8)

    intent = engine.intent(signal, engine.analyze(signal))

    # 15 % of 10 000 USDT margin at 20x = 30 000 USDT notional = 0.5 BTC at 60 000
    assert intent.quantity == Decimal("0.500")
    assert (intent.stop_loss, intent.take_profit) == (Decimal("58800.0"), Decimal("61200.0"))
    assert intent.leverage == 20 and intent.margin_mode == "ISOLATED"
    assert intent.idempotency_key == signal.idempotency_key


def test_size_that_rounds_to_nothing_is_refused_not_rounded_up(settings):
    engine = BrainEngine(settings, FakeMarket(FLAT, equity="0.5"))
    signal = _signal(0.8)

    with pytest.raises(SizingError, match="below_min_notional"):
        engine.intent(signal, engine.analyze(signal))
