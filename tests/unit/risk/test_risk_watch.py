"""The live watch's arithmetic: distances, levels, PnL and margin ratio of one position."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from nameko_services.risk.watch import (
    WatchedPosition,
    WatchEngine,
    liquidation_alert,
    missing_stop_alert,
    stop_alert,
)
from shared.money import DEFAULT_BRACKETS, liquidation_price
from shared.settings import RiskSettings

BRACKETS = DEFAULT_BRACKETS["BTCUSDT"]


def _long(stop: D | None = D(58800)) -> WatchedPosition:
    liq = liquidation_price("LONG", D(60000), D("0.01"), 20, BRACKETS)
    return WatchedPosition("BTCUSDT", "LONG", D("0.01"), D(60000), liq, D(30), stop,
                           stop is not None)


def _short() -> WatchedPosition:
    liq = liquidation_price("SHORT", D(60000), D("0.01"), 20, BRACKETS)
    return WatchedPosition("BTCUSDT", "SHORT", D("0.01"), D(60000), liq, D(30), D(61200), True)


@pytest.fixture
def watch() -> WatchEngine:
    return WatchEngine(RiskSettings())


def test_position_at_entry_is_calm_with_the_full_cushion(watch: WatchEngine) -> None:
    risk = watch.evaluate(_long(), D(60000), BRACKETS)

    assert risk.liquidation_level == "" and risk.stop_level == ""
    assert D("0.046") < risk.liquidation_distance < D("0.047")  # ~4.6 % at 20x
    assert risk.stop_distance == D("0.02")
    assert risk.unrealized_pnl == 0
    # maintenance 600 x 0.4 % = 2.4 on a 30 USDT isolated wallet
    assert risk.margin_ratio == D("0.08")


def test_adverse_move_past_the_warning_threshold_warns(watch: WatchEngine) -> None:
    risk = watch.evaluate(_long(), D(58900), BRACKETS)

    assert risk.liquidation_level == "warning"
    assert risk.unrealized_pnl == D(-11)
    assert risk.margin_ratio > D("0.08")


def test_mark_next_to_liquidation_is_critical_and_crossing_clamps_to_zero(
        watch: WatchEngine) -> None:
    near = watch.evaluate(_long(None), D(57700), BRACKETS)
    beyond = watch.evaluate(_long(None), D(57000), BRACKETS)

    assert near.liquidation_level == "critical" and near.stop_distance is None
    assert beyond.liquidation_distance == 0 and beyond.liquidation_level == "critical"


def test_short_mirror_image_measures_upward_moves(watch: WatchEngine) -> None:
    calm = watch.evaluate(_short(), D(59000), BRACKETS)
    warned = watch.evaluate(_short(), D(61150), BRACKETS)

    assert calm.liquidation_level == "" and calm.unrealized_pnl == D(10)
    assert warned.liquidation_level == "warning" and warned.stop_level == "warning"


def test_mark_close_to_the_stop_raises_a_stop_warning(watch: WatchEngine) -> None:
    risk = watch.evaluate(_long(), D(59000), BRACKETS)

    assert risk.stop_level == "warning"
    assert stop_alert(risk).code == "STOP_APPROACHING"


def test_alerts_carry_codes_levels_and_the_numbers(watch: WatchEngine) -> None:
    warn = liquidation_alert(watch.evaluate(_long(), D(58900), BRACKETS))
    crit = liquidation_alert(watch.evaluate(_long(), D(57700), BRACKETS))
    missing = missing_stop_alert(_long(None))

    assert (warn.code, warn.level, warn.symbol) == ("LIQUIDATION_WARNING", "warning", "BTCUSDT")
    assert "58900" in warn.text and "% from liquidation" in warn.text
    assert (crit.code, crit.level) == ("LIQUIDATION_CRITICAL", "critical")
    assert (missing.code, missing.level) == ("STOP_LOSS_MISSING", "critical")
