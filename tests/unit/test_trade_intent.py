"""TradeIntent.at_price: the one constructor brain's sizing and execute's /trade share."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

from shared.models import TradeIntent
from shared.settings import load_settings


def _intent(side: str, **leverage) -> TradeIntent:
    settings = load_settings(leverage=leverage)
    return TradeIntent.at_price(
        signal_id="s", idempotency_key="k", symbol="BTCUSDT", side=side,  # type: ignore[arg-type]
        quantity=D("0.123"), price=D("60000.05"), tick=D("0.1"), leverage=settings.leverage,
        strategy="ema", received_at=datetime(2026, 1, 1, tzinfo=UTC), alert_price=D(60010))


def test_brackets_margin_and_leverage_come_from_the_price_and_the_settings(secrets_env):
    long = _intent("LONG")

    # SL/TP at -/+2 % of 60 000.05, rounded half-up to the 0.1 tick
    assert (long.stop_loss, long.take_profit) == (D("58800.0"), D("61200.1"))
    assert long.margin == D("369.0003")  # 0.123 * 60 000.05 / 20 = 369.000307..
    assert (long.leverage, long.margin_mode, long.reference_price) == (20, "ISOLATED",
                                                                        D("60000.05"))
    assert (long.strategy, long.alert_price, long.quantity) == ("ema", D(60010), D("0.123"))


def test_a_short_has_its_stop_above_and_other_percentages_are_honoured(secrets_env):
    short = _intent("SHORT", leverage=10, stop_loss_percent=0.01, take_profit_percent=0.03)

    assert (short.stop_loss, short.take_profit) == (D("60600.1"), D("58200.0"))
    assert short.leverage == 10 and short.margin == D("738.0006")
