"""SymbolRules: the feed's parse of ccxt's market, and the rounding that replaces ccxt's
``amount_to_precision`` in brain (checked against ccxt itself)."""

from __future__ import annotations

from decimal import Decimal

import ccxt
from hypothesis import given
from hypothesis import strategies as st

from shared.symbol_rules import SymbolRules

MARKET = {
    "id": "BTCUSDT", "symbol": "BTC/USDT:USDT",
    "precision": {"price": 0.1, "amount": 0.001},
    "limits": {"amount": {"min": 0.001, "max": 1000.0}, "cost": {"min": 100.0}},
}


def test_rules_are_parsed_from_ccxts_market_structure() -> None:
    rules = SymbolRules.from_ccxt_market(MARKET)

    assert (rules.symbol, rules.tick_size, rules.step_size, rules.min_quantity,
            rules.min_notional) == ("BTCUSDT", Decimal("0.1"), Decimal("0.001"),
                                    Decimal("0.001"), Decimal(100))


def test_a_quantity_below_one_step_floors_to_zero() -> None:
    rules = SymbolRules.from_ccxt_market(MARKET)

    assert rules.floor_quantity(Decimal("0.0009")) == 0
    assert rules.floor_quantity(Decimal("-1")) == 0


@given(st.decimals(min_value=Decimal("0.001"), max_value=Decimal(5000), places=8),
       st.sampled_from(["0.001", "0.01", "1", "0.1"]))
def test_floor_quantity_agrees_with_ccxts_amount_to_precision(quantity: Decimal,
                                                               step: str) -> None:
    exchange = _exchange(step)
    rules = SymbolRules.from_ccxt_market(exchange.markets["BTC/USDT:USDT"])
    if quantity < Decimal(step):
        return  # ccxt raises below one step; floor_quantity answers 0 (tested above)

    ours = rules.floor_quantity(quantity)

    assert ours == Decimal(exchange.amount_to_precision("BTC/USDT:USDT", str(quantity)))


_EXCHANGES: dict[str, ccxt.binanceusdm] = {}


def _exchange(step: str) -> ccxt.binanceusdm:
    if step not in _EXCHANGES:
        ex = ccxt.binanceusdm()
        market = {**MARKET, "base": "BTC", "quote": "USDT", "settle": "USDT", "type": "swap",
                  "swap": True, "linear": True, "contract": True, "active": True,
                  "spot": False, "margin": False, "future": False, "option": False,
                  "inverse": False, "contractSize": 1.0, "baseId": "BTC", "quoteId": "USDT",
                  "settleId": "USDT",
                  "precision": {"price": 0.1, "amount": float(step)}}
        ex.set_markets([market])
        _EXCHANGES[step] = ex
    return _EXCHANGES[step]
