from __future__ import annotations

import math
from decimal import Decimal as D

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shared.money import (
    DEFAULT_BRACKETS,
    bracket_for_notional,
    bracket_payoff,
    bracket_prices,
    bracket_table,
    break_even_probability,
    kelly_fraction,
    kelly_size,
    liquidation_distance,
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


def test_kelly_worked_examples_without_fees():
    even = bracket_payoff(D("0.02"), D("0.02"), D(0))
    assert even.ratio == 1
    assert kelly_fraction(D("0.5"), even.ratio) == 0
    assert kelly_fraction(D("0.6"), even.ratio) == D("0.2")
    assert kelly_fraction(D("0.4"), D(2)) == D("0.1")
    assert kelly_fraction(D("0.25"), even.ratio) == D("-0.5")


def test_fees_on_both_legs_shrink_the_payoff_and_raise_break_even():
    pay = bracket_payoff(D("0.02"), D("0.02"), D("0.0005"))

    assert (pay.win, pay.loss) == (D("0.019"), D("0.021"))
    assert break_even_probability(pay) == D("0.525")
    assert kelly_fraction(D("0.52"), pay.ratio) < 0


def test_kelly_size_at_the_defaults_is_0_084_of_full_kelly():
    # 20x, SL = TP = 2 %, taker 0.05 %: b = 19/21, p = 0.7 -> f* = 0.7 - 0.3 * 21/19 = 7/19
    pay = bracket_payoff(D("0.02"), D("0.02"), D("0.0005"))

    size = kelly_size(D("0.7"), pay, 20, D("0.2"), D("0.15"))

    assert abs(size.f_star - D(7) / 19) < D("1e-20")
    assert abs(size.margin_fraction - D("1.4") / 19) < D("1e-20")
    assert size.effective_kelly == D("0.084")  # 0.2 * 20 * 0.021
    assert abs(size.equity_at_risk - D("0.084") * 7 / 19) < D("1e-20")
    assert not size.capped
    capped = kelly_size(D("0.95"), pay, 20, D("0.2"), D("0.15"))
    assert capped.capped and capped.margin_fraction == D("0.15")


def test_bracket_payoff_refuses_a_take_profit_the_fees_eat():
    with pytest.raises(ValueError):
        bracket_payoff(D("0.02"), D("0.001"), D("0.0005"))


def _log_growth(r: float, p: float, b: float) -> float:
    return p * math.log1p(r * b) + (1 - p) * math.log1p(-r)


probabilities = st.decimals(min_value=D("0.01"), max_value=D("0.99"), places=4)
percents = st.decimals(min_value=D("0.002"), max_value=D("0.2"), places=4)
fees = st.decimals(min_value=D(0), max_value=D("0.0009"), places=5)


@settings(max_examples=300, deadline=None)
@given(p=probabilities, sl=percents, tp=percents, fee=fees)
def test_full_kelly_maximises_expected_log_growth(p, sl, tp, fee):
    # independent of the formula: f* is where p*log(1 + f*b) + q*log(1 - f) peaks
    assume(tp > 2 * fee + D("0.001"))
    pay = bracket_payoff(sl, tp, fee)
    f = kelly_fraction(p, pay.ratio)
    assume(D("0.001") < f < D("0.999"))
    b, r = float(pay.ratio), float(f)

    best = _log_growth(r, float(p), b)

    for other in (r * 0.9, r * 1.1, r - 0.001, r + 0.001):
        if 0 <= other < 1:
            assert _log_growth(other, float(p), b) <= best + 1e-12


@settings(max_examples=300, deadline=None)
@given(p=probabilities, sl=percents, tp=percents, fee=fees,
       leverage=st.integers(1, 125),
       fraction=st.decimals(min_value=D("0.01"), max_value=D(1), places=3),
       cap=st.decimals(min_value=D("0.01"), max_value=D(1), places=3))
def test_kelly_size_is_bounded_and_its_risk_is_the_stop_loss_on_the_margin(
        p, sl, tp, fee, leverage, fraction, cap):
    assume(tp > 2 * fee + D("0.001"))
    pay = bracket_payoff(sl, tp, fee)

    size = kelly_size(p, pay, leverage, fraction, cap)

    assert 0 <= size.margin_fraction <= cap
    assert (size.f_star > 0) == (p > break_even_probability(pay))
    assert abs(size.equity_at_risk - size.margin_fraction * leverage * pay.loss) < D("1e-20")
    if size.f_star > 0 and not size.capped:
        assert abs(size.equity_at_risk - size.effective_kelly * size.f_star) < D("1e-20")
    if size.f_star <= 0:
        assert size.margin_fraction == 0


def test_liquidation_distance_worked_examples():
    # 20x long at 60 000: liquidation 57 228.92 (Binance's example) is 4.62 % below
    liq = liquidation_price("LONG", D(60000), D("0.010"), 20, BTC)
    assert liquidation_distance("LONG", D(60000), liq).quantize(D("0.0001")) == D("0.0462")
    assert liquidation_distance("SHORT", D(60000), D(63000)) == D("0.05")
    assert liquidation_distance("LONG", D(56000), D(57000)) == 0  # already past it
    assert liquidation_distance("SHORT", D(64000), D(63000)) == 0
    assert liquidation_distance("LONG", D(60000), None) is None  # fully collateralised
    assert liquidation_distance("LONG", D(60000), D(0)) is None
    assert liquidation_distance("LONG", D(0), D(57000)) is None


@settings(max_examples=200, deadline=None)
@given(side=st.sampled_from(["LONG", "SHORT"]),
       ref=st.decimals(min_value=D("0.01"), max_value=D(200000), places=2),
       liq=st.decimals(min_value=D("0.01"), max_value=D(200000), places=2))
def test_liquidation_distance_is_the_adverse_move_that_reaches_liquidation(side, ref, liq):
    dist = liquidation_distance(side, ref, liq)

    assert dist is not None and dist >= 0
    safe = liq < ref if side == "LONG" else liq > ref
    if safe:  # moving the price against the position by dist lands on the liquidation
        moved = ref * (1 - dist) if side == "LONG" else ref * (1 + dist)
        assert abs(moved - liq) < D("1e-18") * max(ref, D(1))
        assert dist == abs(ref - liq) / ref
    else:
        assert dist == 0
