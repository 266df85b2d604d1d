"""Helpers for e2e tests that need an open position on the running system."""

from __future__ import annotations

import json
import urllib.request
from typing import Any, TypeVar

from shared.settings import Settings
from tests.support.waiting import wait_for

__all__ = ["free_symbol", "open_manual_trade", "open_position", "wait_for"]

T = TypeVar("T")


def free_symbol(settings: Settings, rpc: Any) -> str:
    """An allowed symbol without an open position (closing one if every symbol has one)."""
    held = {p["symbol"] for p in rpc.execute.positions()}
    for symbol in settings.trading.allowed_symbols:
        if symbol not in held:
            return symbol
    symbol = settings.trading.allowed_symbols[0]
    rpc.execute.close(symbol)
    return symbol


def open_manual_trade(settings: Settings, api_key: str, exchange: Any,
                      symbol: str) -> dict[str, Any]:
    """A small LONG through execute's ``POST /trade`` (risk-checked, queued, filled)."""
    market = exchange.markets_by_id[symbol][0]
    price = float(exchange.fetch_ticker(market["symbol"])["last"])
    min_cost = float((market.get("limits", {}).get("cost") or {}).get("min") or 100)
    quantity = exchange.amount_to_precision(market["symbol"], 1.5 * max(min_cost, 100) / price)
    req = urllib.request.Request(
        settings.services.url_of("execute") + "/trade", method="POST",
        data=json.dumps({"symbol": symbol, "side": "LONG", "quantity": quantity}).encode(),
        headers={"Content-Type": "application/json", "X-API-Key": api_key})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 202
        return dict(json.loads(resp.read()))


def open_position(settings: Settings, rpc: Any, api_key: str, exchange: Any) -> dict[str, Any]:
    """Open a position on a free symbol and return it as ``execute.positions()`` shows it."""
    rpc.risk.set_state("ACTIVE", "e2e: open a position")
    symbol = free_symbol(settings, rpc)
    open_manual_trade(settings, api_key, exchange, symbol)
    return wait_for(lambda: next((p for p in rpc.execute.positions()
                                  if p["symbol"] == symbol and p.get("stop_loss")), None))
