from __future__ import annotations

from decimal import Decimal as D

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shared.money import (
    DEFAULT_BRACKETS,
    bracket_for_notional,
    bracket_prices,
    bracket_table,
    kelly_fraction,
    kelly_margin_fraction,
    liquidation_price,
    maintenance_margin,
    round_to_step,
)

BTC = DEFAULT_BRACKETS["BTCUSDT"]


def test_worked_example_at_20x_matches_binance_to_the_cent():
    long = liquidation_price("LONG", D(60000), D("0.010"), 20, BTC)
    short = liquidation_price("SHORT", D(60000), D("0.010"), 20, BTC)

    assert long.quantize(D("0.01")) == D("57228.92")
    assert short.quantize(D("0.01")) == D("62749.00")


def test_example_with_nonzero_maintenance_amount():
    # 2021 tier 2: Q=2, notional 120k, WB=6000, MMR 0.5 %, cum 50
    assert liquidation_price("LONG", D(60000), D(2), 20, BTC).quantize(D("0.01")) == D("57261.31")
    assert liquidation_price("SHORT", D(60000), D(2), 20, BTC).quantize(D("0.01")) == D(
        "62711.44")


def test_cum_follows_binance_recurrence():
    assert [b.cum for b in BTC[:4]] == [D(0), D(50), D(1300), D(16300)]


@pytest.mark.parametrize("symbol", sorted(DEFAULT_BRACKETS))
def test_maintenance_margin_is_continuous_at_every_bracket_boundary(symbol):
    for lower, upper in zip(DEFAULT_BRACKETS[symbol], DEFAULT_BRACKETS[symbol][1:], strict=False):
        at = upper.notional_floor
        below = at * lower.maint_margin_ratio - lower.cum
        above = at * upper.maint_margin_ratio - upper.cum
        assert below == above


@settings(max_examples=300, deadline=None)
@given(
    symbol=st.sampled_from(sorted(DEFAULT_BRACKETS)),
    side=st.sampled_from(["LONG", "SHORT"]),
    entry=st.decimals(min_value=D("0.05"), max_value=D(200000), places=2),
    notional=st.decimals(min_value=D(5), max_value=D(5_000_000), places=2),
    leverage=st.integers(min_value=1, max_value=20),
)
def test_equity_at_liquidation_equals_maintenance_margin(symbol, side, entry, notional, leverage):
    brackets = DEFAULT_BRACKETS[symbol]
    # Binance refuses leverage above the bracket's maximum: such positions never exist
    assume(leverage <= bracket_for_notional(brackets, notional).initial_leverage)
    qty = notional / entry
    wallet = qty * entry / leverage

    liq = liquidation_price(side, entry, qty, leverage, brackets)

    sign = 1 if side == "LONG" else -1
    if liq > 0:
        equity = wallet + sign * qty * (liq - entry)
        mm = maintenance_margin(qty * liq, brackets)
        assert abs(equity - mm) <= D("1e-6") * max(D(1), mm)
        # liquidation is on the losing side of entry
        assert (liq < entry) if side == "LONG" else (liq > entry)


@settings(max_examples=200, deadline=None)
@given(
    side=st.sampled_from(["LONG", "SHORT"]),
    entry=st.decimals(min_value=D(100), max_value=D(100000), places=1),
)
def test_two_percent_stop_triggers_before_liquidation_at_20x(side, entry):
    qty = D(1000) / entry
    stop, take = bracket_prices(side, entry, D("0.02"), D("0.02"), D("0.1"))

    liq = liquidation_price(side, entry, qty, 20, BTC)

    if side == "LONG":
        assert liq < stop < entry < take
    else:
        assert take < entry < stop < liq


def test_bracket_lookup_uses_half_open_intervals():
    table = bracket_table([(125, 0, 50_000, 0.004), (100, 50_000, 250_000, 0.005)])

    assert bracket_for_notional(table, D(49_999.99)).bracket == 1
    assert bracket_for_notional(table, D(50_000)).bracket == 2


def test_quantities_truncate_and_prices_round_to_tick():
    assert round_to_step(D("0.01999"), D("0.001")) == D("0.019")
    stop, take = bracket_prices("LONG", D("60000.5"), D("0.02"), D("0.02"), D("0.1"))
    assert (stop, take) == (D("58800.5"), D("61200.5"))


def test_kelly_has_no_edge_at_even_odds_and_grows_with_probability():
    assert kelly_fraction(0.5, 1.0) == 0.0
    assert kelly_fraction(0.6, 1.0) == pytest.approx(0.2)
    assert kelly_fraction(0.4, 1.0) == 0.0


def test_kelly_margin_is_risk_divided_by_loss_per_margin_and_capped():
    # p=0.6 -> full Kelly 0.2 -> x0.2 = 4 % of equity at risk; a 2 % stop at 20x loses
    # 40 % of the margin -> margin 10 % of equity
    assert kelly_margin_fraction(0.6, 0.02, 0.02, 20, 0.2, 0.15) == pytest.approx(0.10)
    assert kelly_margin_fraction(0.9, 0.02, 0.02, 20, 0.2, 0.15) == pytest.approx(0.15)
