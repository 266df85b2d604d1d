"""Money math shared by risk, execute and the paper exchange, so they can never disagree.

All prices and quantities are :class:`decimal.Decimal`; floats only at the edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Any, Literal

Side = Literal["LONG", "SHORT"]


@dataclass(frozen=True)
class Bracket:
    """One tier of Binance's leverage-bracket table (``GET /fapi/v1/leverageBracket``)."""

    bracket: int
    initial_leverage: int
    notional_floor: Decimal
    notional_cap: Decimal
    maint_margin_ratio: Decimal
    cum: Decimal


def parse_brackets(raw: Any) -> tuple[Bracket, ...]:
    """Binance's ``GET /fapi/v1/leverageBracket`` answer for one symbol (a list of one
    ``{"symbol", "brackets": [...]}`` or that object) as a table."""
    rows = raw[0]["brackets"] if isinstance(raw, list) else raw["brackets"]
    return tuple(
        Bracket(int(r["bracket"]), int(r["initialLeverage"]), Decimal(str(r["notionalFloor"])),
                Decimal(str(r["notionalCap"])), Decimal(str(r["maintMarginRatio"])),
                Decimal(str(r["cum"])))
        for r in rows
    )


def bracket_table(rows: Sequence[tuple[int, float, float, float]]) -> tuple[Bracket, ...]:
    """Build a table from (initial leverage, floor, cap, MMR) rows, deriving ``cum``.

    ``cum_n = floor_n * (MMR_n - MMR_{n-1}) + cum_{n-1}`` (Binance FAQ), so a position's
    maintenance margin is continuous across tier boundaries.
    """
    out: list[Bracket] = []
    cum = Decimal(0)
    prev_mmr = Decimal(0)
    for i, (lev, floor, cap, mmr) in enumerate(rows, start=1):
        d_floor, d_mmr = Decimal(str(floor)), Decimal(str(mmr))
        cum = d_floor * (d_mmr - prev_mmr) + cum
        out.append(Bracket(i, int(lev), d_floor, Decimal(str(cap)), d_mmr, cum))
        prev_mmr = d_mmr
    return tuple(out)


def bracket_for_notional(brackets: Sequence[Bracket], notional: Decimal) -> Bracket:
    for b in brackets:
        if b.notional_floor <= notional < b.notional_cap:
            return b
    return brackets[-1] if notional >= brackets[-1].notional_floor else brackets[0]


def _liq_with(side: Side, qty: Decimal, entry: Decimal, wallet: Decimal, b: Bracket) -> Decimal:
    if side == "LONG":
        return (qty * entry - wallet - b.cum) / (qty * (1 - b.maint_margin_ratio))
    return (qty * entry + wallet + b.cum) / (qty * (1 + b.maint_margin_ratio))


def liquidation_price(
    side: Side,
    entry_price: Decimal,
    quantity: Decimal,
    leverage: int,
    brackets: Sequence[Bracket],
    wallet_balance: Decimal | None = None,
) -> Decimal:
    """Binance's isolated, one-way-mode liquidation price.

    LONG ``(Q*EP - WB - cum) / (Q*(1 - MMR))``; SHORT ``(Q*EP + WB + cum) / (Q*(1 + MMR))``,
    with MMR and cum of the bracket holding the notional *at the liquidation price*
    (re-evaluated when it differs from the entry's bracket). ``wallet_balance`` defaults
    to the initial margin ``Q*EP/leverage``. Never negative.
    """
    qty = abs(quantity)
    if qty == 0 or entry_price <= 0:
        raise ValueError("quantity and entry_price must be positive")
    wallet = wallet_balance if wallet_balance is not None else qty * entry_price / leverage
    b = bracket_for_notional(brackets, qty * entry_price)
    price = _liq_with(side, qty, entry_price, wallet, b)
    for _ in range(len(brackets)):
        at_liq = bracket_for_notional(brackets, qty * max(price, Decimal(0)))
        if at_liq == b:
            break
        b = at_liq
        price = _liq_with(side, qty, entry_price, wallet, b)
    return max(price, Decimal(0))


def maintenance_margin(notional: Decimal, brackets: Sequence[Bracket]) -> Decimal:
    b = bracket_for_notional(brackets, notional)
    return notional * b.maint_margin_ratio - b.cum


def bracket_prices(
    side: Side, fill_price: Decimal, stop_loss_pct: Decimal, take_profit_pct: Decimal,
    tick: Decimal,
) -> tuple[Decimal, Decimal]:
    """(stop-loss, take-profit) trigger prices at -/+ the percentages of the fill, on tick."""
    if side == "LONG":
        sl = fill_price * (1 - stop_loss_pct)
        tp = fill_price * (1 + take_profit_pct)
    else:
        sl = fill_price * (1 + stop_loss_pct)
        tp = fill_price * (1 - take_profit_pct)
    return round_to_step(sl, tick, ROUND_HALF_UP), round_to_step(tp, tick, ROUND_HALF_UP)


def round_to_step(value: Decimal, step: Decimal, rounding: str = ROUND_DOWN) -> Decimal:
    """Round to a multiple of ``step``; quantities truncate (ccxt amount_to_precision)."""
    if step <= 0:
        return value
    return (value / step).to_integral_value(rounding=rounding) * step


def kelly_fraction(win_probability: float, payoff_ratio: float) -> float:
    """Full-Kelly fraction of equity to risk: ``p - (1 - p) / b``; 0 when negative."""
    if payoff_ratio <= 0:
        raise ValueError("payoff_ratio must be positive")
    return max(0.0, win_probability - (1.0 - win_probability) / payoff_ratio)


def kelly_margin_fraction(
    win_probability: float,
    stop_loss_pct: float,
    take_profit_pct: float,
    leverage: int,
    fractional: float,
    cap: float,
) -> float:
    """Margin to commit, as a fraction of equity.

    Kelly sizes the *amount at risk*: a stop at ``stop_loss_pct`` with ``leverage`` loses
    ``stop_loss_pct * leverage`` of the margin, so margin = risk / that loss, capped.
    """
    risk = kelly_fraction(win_probability, take_profit_pct / stop_loss_pct) * fractional
    loss_per_margin = stop_loss_pct * leverage
    return min(cap, risk / loss_per_margin) if loss_per_margin > 0 else 0.0


# Tier tables the paper exchange serves (and the default when the exchange is unreachable).
# BTC/ETH follow Binance's published 2021 USD-M table; cum is derived, never typed in.
_MAJOR = [
    (125, 0, 50_000, 0.004), (100, 50_000, 250_000, 0.005), (50, 250_000, 1_000_000, 0.01),
    (20, 1_000_000, 10_000_000, 0.025), (10, 10_000_000, 20_000_000, 0.05),
    (5, 20_000_000, 50_000_000, 0.10), (4, 50_000_000, 100_000_000, 0.125),
    (3, 100_000_000, 200_000_000, 0.15), (2, 200_000_000, 300_000_000, 0.25),
    (1, 300_000_000, 9_000_000_000, 0.5),
]
_ALT = [
    (75, 0, 10_000, 0.0065), (50, 10_000, 50_000, 0.01), (25, 50_000, 250_000, 0.02),
    (10, 250_000, 1_000_000, 0.05), (5, 1_000_000, 2_000_000, 0.1),
    (4, 2_000_000, 5_000_000, 0.125), (3, 5_000_000, 10_000_000, 0.15),
    (2, 10_000_000, 20_000_000, 0.25), (1, 20_000_000, 9_000_000_000, 0.5),
]
DEFAULT_BRACKETS: dict[str, tuple[Bracket, ...]] = {
    "BTCUSDT": bracket_table(_MAJOR),
    "ETHUSDT": bracket_table(_MAJOR),
    "BNBUSDT": bracket_table(_ALT),
    "ADAUSDT": bracket_table(_ALT),
    "DOGEUSDT": bracket_table(_ALT),
}
