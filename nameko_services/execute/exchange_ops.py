"""Exchange operations execute builds on: pre-flight, bracket orders, order lookups,
flattening and PnL settlement from the exchange's own trade records."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import ccxt

from nameko_services.execute.store import OrderRecord, TradeStore
from shared.market import ExchangeGateway, ExchangeUnavailable, to_decimal
from shared.settings import Settings

log = logging.getLogger(__name__)

BRACKET_TYPES = {"stop_loss": "STOP_MARKET", "take_profit": "TAKE_PROFIT_MARKET"}


class PreflightError(RuntimeError):
    """The exchange account is not set up as configured; nothing may be sent."""


def order_side(side: str, closing: bool = False) -> str:
    buy = side == "LONG"
    return ("sell" if buy else "buy") if closing else ("buy" if buy else "sell")


@dataclass(frozen=True)
class Settlement:
    exit_price: Decimal | None
    realized_pnl: Decimal
    fees: Decimal
    closed_quantity: Decimal


class ExchangeOps:
    def __init__(self, settings: Settings, gateway: ExchangeGateway, store: TradeStore) -> None:
        self.settings = settings
        self.gw = gateway
        self.store = store
        self._prepared: set[str] = set()
        self._account_checked = False

    # --- pre-flight ---
    def preflight(self, symbol: str) -> None:
        """One-way mode, single-asset margin, ISOLATED and the leverage, set then read back.

        Raises :class:`PreflightError` naming the mismatch; the caller blocks the symbol.
        """
        if symbol in self._prepared:
            return
        client, want = self.gw.client, self.settings.leverage.leverage
        if not self._account_checked:
            if self.gw.call(client.fapiPrivateGetPositionSideDual).get("dualSidePosition"):
                self.gw.call(client.fapiPrivatePostPositionSideDual,
                             {"dualSidePosition": "false"})
            dual = self.gw.call(client.fapiPrivateGetPositionSideDual).get("dualSidePosition")
            if dual in (True, "true"):
                raise PreflightError("account is in hedge mode; one-way mode is required")
            multi = self.gw.call(client.fapiPrivateGetMultiAssetsMargin)
            if multi.get("multiAssetsMargin") in (True, "true"):
                raise PreflightError("multi-assets margin is on; single-asset is required")
            self._account_checked = True
        self.gw.call(client.set_leverage, want, symbol)
        with contextlib.suppress(ccxt.MarginModeAlreadySet):
            self.gw.call(client.set_margin_mode, "isolated", symbol)
        config = self.gw.call(client.fapiPrivateGetSymbolConfig, {"symbol": symbol})
        row = config[0] if isinstance(config, list) and config else config
        leverage, margin = int(row.get("leverage", 0)), str(row.get("marginType", ""))
        if leverage != want or margin.upper() != "ISOLATED":
            raise PreflightError(f"{symbol}: read back leverage {leverage} / {margin}, "
                                 f"want {want} / ISOLATED")
        self._prepared.add(symbol)

    # --- lookups ---
    def find_order(self, symbol: str, cid: str, *, trigger: bool) -> dict[str, Any] | None:
        params: dict[str, Any] = {"clientOrderId": cid}
        if trigger:
            params["trigger"] = True
        try:
            return self.gw.call(self.gw.client.fetch_order, None, symbol, params)
        except ccxt.OrderNotFound:
            return None

    def open_algo_orders(self, symbol: str) -> list[dict[str, Any]]:
        return list(self.gw.call(self.gw.client.fetch_open_orders, symbol, None, None,
                                 {"trigger": True}))

    def position(self, symbol: str) -> dict[str, Any] | None:
        return next((p for p in self.gw.positions() if p["info"].get("symbol") == symbol), None)

    # --- orders ---
    def place_bracket(self, signal_id: str, symbol: str, side: str, kind: str, cid: str,
                      trigger: Decimal, qty: Decimal, *, look_first: bool) -> None:
        """A reduce-only algo order; recorded before it is sent, never sent twice."""
        if look_first:
            existing = self.find_order(symbol, cid, trigger=True)
            if existing is not None and existing.get("status") == "open":
                return
        order_type = BRACKET_TYPES[kind]
        close_side = order_side(side, closing=True)
        self.store.record_pending(OrderRecord(cid, signal_id, symbol, kind, close_side.upper(),
                                              order_type, qty, trigger))
        try:
            order = self.gw.call(self.gw.client.create_order, symbol, order_type, close_side,
                                 float(qty), None,
                                 {"triggerPrice": float(trigger), "reduceOnly": True,
                                  "clientOrderId": cid, "workingType": "MARK_PRICE"})
        except (ccxt.ExchangeError, ExchangeUnavailable) as exc:
            self.store.update_order(cid, status="rejected", error=str(exc))
            raise
        self.store.update_order(cid, status="open", exchange_id=str(order.get("id")))

    def cancel_algo_orders(self, symbol: str) -> int:
        cancelled = 0
        for order in self.open_algo_orders(symbol):
            with contextlib.suppress(ccxt.OrderNotFound):
                self.gw.call(self.gw.client.cancel_order, order["id"], symbol, {"trigger": True})
                cancelled += 1
            if order.get("clientOrderId"):
                self.store.update_order(order["clientOrderId"], status="canceled")
        return cancelled

    def flatten(self, symbol: str, side: str, qty: Decimal, cid: str,
                signal_id: str) -> dict[str, Any]:
        """Reduce-only market close of ``qty``; recorded before it is sent."""
        close_side = order_side(side, closing=True)
        self.store.record_pending(OrderRecord(cid, signal_id, symbol, "close",
                                              close_side.upper(), "MARKET", qty))
        order = self.gw.call(self.gw.client.create_order, symbol, "market", close_side,
                             float(qty), None, {"reduceOnly": True, "clientOrderId": cid})
        self.store.update_order(cid, status="filled", exchange_id=str(order.get("id")),
                                avg_price=to_decimal(order.get("average")))
        return order

    # --- settlement ---
    def settle(self, symbol: str, side: str, since_ms: int,
               entry_order_id: str | None = None) -> Settlement:
        """Exit price, realised PnL and fees of a closed position, from the exchange's fills.

        The position's fills start at its entry order's first trade (trade ids only grow),
        so a previous position's close in the same second is never counted; without a
        known entry (an adopted position) the time window alone delimits it.
        """
        trades = self.gw.call(self.gw.client.fetch_my_trades, symbol, since_ms, 1000)
        entry_ids = [int(t["id"]) for t in trades
                     if entry_order_id is not None and str(t.get("order")) == entry_order_id]
        if entry_ids:
            trades = [t for t in trades if int(t["id"]) >= min(entry_ids)]
        closing_side = order_side(side, closing=True)
        closing = [t for t in trades if t["side"] == closing_side]
        realized = sum((to_decimal(t["info"].get("realizedPnl")) for t in trades), Decimal(0))
        fees = sum((to_decimal((t.get("fee") or {}).get("cost")) for t in trades), Decimal(0))
        qty = sum((to_decimal(t["amount"]) for t in closing), Decimal(0))
        exit_price = (sum((to_decimal(t["price"]) * to_decimal(t["amount"]) for t in closing),
                          Decimal(0)) / qty) if qty else None
        return Settlement(exit_price, realized - fees, fees, qty)

    def was_liquidated(self, symbol: str, since_ms: int) -> bool:
        try:
            rows = self.gw.call(self.gw.client.fapiPrivateGetForceOrders,
                                {"symbol": symbol, "startTime": since_ms})
        except ccxt.ExchangeError:
            return False
        return bool(rows)
