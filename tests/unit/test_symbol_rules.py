"""SymbolRules: the feed's parse of ccxt's market, and the rounding that replaces ccxt's
``amount_to_precision`` in brain (checked against ccxt itself)."""

from __future__ import annotations

from decimal import Decimal

import ccxt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.money import DEFAULT_BRACKETS, Bracket
from shared.state import MARKET_STALE, StaleState
from shared.symbol_rules import SymbolRules, SymbolRulesReader

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


class _OneHash:
    """The one Redis call the reader makes (HGET), over a dict."""

    def __init__(self, rows: dict[str, str]) -> None:
        self.rows = rows

    def hget(self, key: str, field: str) -> str | None:
        return self.rows.get(field)


def test_brackets_fall_back_to_the_built_in_table_when_the_feed_has_none() -> None:
    stored = SymbolRules.from_ccxt_market(MARKET)
    reader = SymbolRulesReader(_OneHash({"BTCUSDT": stored.model_dump_json()}))  # type: ignore[arg-type]

    assert reader.brackets("BTCUSDT") == DEFAULT_BRACKETS["BTCUSDT"]


def test_the_feeds_brackets_win_and_a_symbol_with_none_anywhere_is_stale() -> None:
    own = (Bracket(1, 20, Decimal(0), Decimal(1000), Decimal("0.01"), Decimal(0)),)
    rows = {"BTCUSDT": SymbolRules.from_ccxt_market(MARKET, own).model_dump_json(),
            "NEWUSDT": SymbolRules.from_ccxt_market({**MARKET, "id": "NEWUSDT"})
            .model_dump_json()}
    reader = SymbolRulesReader(_OneHash(rows))  # type: ignore[arg-type]

    assert reader.brackets("BTCUSDT") == own
    with pytest.raises(StaleState) as raised:
        reader.brackets("NEWUSDT")
    assert raised.value.reason == MARKET_STALE
    with pytest.raises(StaleState):
        reader.get("NOSUCHUSDT")
