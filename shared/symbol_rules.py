"""A symbol's trading rules (tick, step, minimums, leverage brackets), published by the
feed, read by everyone.

The feed loads the exchange's markets anyway; it stores each fed symbol's filters and its
leverage brackets in Redis so brain and risk size, round and check orders without loading
markets themselves (no REST call and no ccxt in those processes). Rules change rarely (a
listing's filters are revised a few times a year), so readers cache them for a minute; a
symbol with no rules is refused as ``market_data_stale`` like a symbol with no prices.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from decimal import ROUND_DOWN, Decimal
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict

from shared.money import DEFAULT_BRACKETS, Bracket
from shared.names import STATE_SYMBOLS_KEY
from shared.state import MARKET_STALE, StaleState, dec, now_ms

CACHE_S = 60.0


class SymbolRules(BaseModel):
    """Binance's PRICE_FILTER tick, LOT_SIZE/MARKET_LOT_SIZE step and minimum quantity, and
    MIN_NOTIONAL, as ccxt's market structure gives them (precision mode TICK_SIZE)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    symbol: str  # exchange id, e.g. BTCUSDT
    tick_size: Decimal
    step_size: Decimal
    min_quantity: Decimal
    min_notional: Decimal
    # Binance's leverage brackets (signed REST, fetched by the feed); empty when the feed
    # could not fetch them, and readers fall back to the built-in table
    brackets: tuple[Bracket, ...] = ()
    updated_ms: int = 0

    @classmethod
    def from_ccxt_market(cls, market: Mapping[str, Any],
                         brackets: tuple[Bracket, ...] = ()) -> SymbolRules:
        limits = market.get("limits") or {}
        precision = market.get("precision") or {}
        return cls(symbol=str(market["id"]), tick_size=dec(precision.get("price")),
                   step_size=dec(precision.get("amount")),
                   min_quantity=dec((limits.get("amount") or {}).get("min")),
                   min_notional=dec((limits.get("cost") or {}).get("min")),
                   brackets=brackets, updated_ms=now_ms())

    def floor_quantity(self, quantity: Decimal) -> Decimal:
        """``quantity`` rounded down to the step (ccxt's ``amount_to_precision``, TRUNCATE),
        0 when below one step (where ccxt raises instead)."""
        if self.step_size <= 0 or quantity <= 0:
            return Decimal(0)
        steps = (quantity / self.step_size).to_integral_value(rounding=ROUND_DOWN)
        return (steps * self.step_size).quantize(self.step_size)


def store_rules(client: redis.Redis, rules: Iterable[SymbolRules]) -> None:
    """The feed's side: one HSET for every symbol it feeds."""
    mapping = {r.symbol: r.model_dump_json() for r in rules}
    if mapping:
        client.hset(STATE_SYMBOLS_KEY, mapping=mapping)  # type: ignore[arg-type]


class SymbolRulesReader:
    """Rules by exchange id, cached for :data:`CACHE_S` per symbol."""

    def __init__(self, client: redis.Redis, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._redis = client
        self._clock = clock
        self._cache: dict[str, tuple[float, SymbolRules]] = {}

    def get(self, symbol: str) -> SymbolRules:
        hit = self._cache.get(symbol)
        now = self._clock()
        if hit is not None and now - hit[0] < CACHE_S:
            return hit[1]
        raw = self._redis.hget(STATE_SYMBOLS_KEY, symbol)
        if not raw:
            raise StaleState(MARKET_STALE, f"{symbol}: no symbol rules from the feed")
        rules = SymbolRules.model_validate_json(raw)
        self._cache[symbol] = (now, rules)
        return rules

    def brackets(self, symbol: str) -> tuple[Bracket, ...]:
        """The exchange's brackets as the feed fetched them, else the built-in table;
        :class:`StaleState` when neither has the symbol."""
        brackets = self.get(symbol).brackets or DEFAULT_BRACKETS.get(symbol)
        if not brackets:
            raise StaleState(MARKET_STALE, f"{symbol}: no leverage brackets (not fetched "
                                           "by the feed, not in the built-in table)")
        return brackets
