"""Execution engine: idempotent entry + reduce-only SL/TP algo orders, and closing.

Idempotency: every order's client id derives from the signal's idempotency key, so a
redelivered intent finds its own order (database first, then the exchange) instead of
sending a second one; a per-symbol Redis lock serialises every execute instance.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import ccxt
import redis

from nameko_services.execute.store import OrderRecord, TradeStore
from shared.db import PositionRow
from shared.exchange import client_order_id
from shared.market import ExchangeGateway, ExchangeUnavailable, to_decimal
from shared.models import PositionView, TradeIntent
from shared.money import bracket_prices
from shared.names import SYMBOL_LOCK_PREFIX
from shared.settings import Settings

log = logging.getLogger(__name__)

class LockBusy(RuntimeError):
    """Another execute instance holds the symbol; retry later."""


class SymbolLock:
    def __init__(self, client: redis.Redis, ttl_ms: int = 30_000, wait_s: float = 10.0) -> None:
        self._redis = client
        self._ttl = ttl_ms
        self._wait = wait_s

    @contextlib.contextmanager
    def hold(self, symbol: str) -> Iterator[None]:
        # redis-py's Lock stores a random token and releases only its own lock (Lua CAS)
        lock = self._redis.lock(SYMBOL_LOCK_PREFIX + symbol, timeout=self._ttl / 1000,
                                blocking_timeout=self._wait)
        if not lock.acquire():
            raise LockBusy(f"{symbol} is locked by another execute worker")
        try:
            yield
        finally:
            with contextlib.suppress(redis.RedisError):
                lock.release()


@dataclass
class Outcome:
    status: str  # opened | duplicate | failed | closed | nothing_to_close
    symbol: str
    signal_id: str
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def _order_side(side: str, closing: bool = False) -> str:
    buy = side == "LONG"
    return ("sell" if buy else "buy") if closing else ("buy" if buy else "sell")


class ExecutionEngine:
    def __init__(self, settings: Settings, gateway: ExchangeGateway, store: TradeStore,
                 lock: SymbolLock) -> None:
        self.settings = settings
        self.gw = gateway
        self.store = store
        self.lock = lock
        self._prepared: set[str] = set()

    # --- opening ---
    def open(self, intent: TradeIntent) -> Outcome:
        with self.lock.hold(intent.symbol):
            return self._open_locked(intent)

    def _open_locked(self, it: TradeIntent) -> Outcome:
        key = it.idempotency_key
        entry_id = client_order_id("p95e", key)
        known = self.store.order(entry_id)
        if known is not None and known.status == "filled":
            position = self.store.position_for_signal(known.signal_id)
            if position is not None:
                return Outcome("duplicate", it.symbol, known.signal_id, "already executed",
                               _position_details(position))
        remote = self._find_order(it.symbol, entry_id, trigger=False)
        if remote is None:
            self.preflight(it.symbol)
            self.store.record_pending(OrderRecord(entry_id, it.signal_id, it.symbol, "entry",
                                                  _order_side(it.side).upper(), "MARKET",
                                                  it.quantity))
            try:
                remote = self.gw.call(self.gw.client.create_order, it.symbol, "market",
                                      _order_side(it.side), float(it.quantity), None,
                                      {"clientOrderId": entry_id})
            except ccxt.ExchangeError as exc:
                self.store.update_order(entry_id, status="rejected", error=str(exc))
                return Outcome("failed", it.symbol, it.signal_id, f"entry rejected: {exc}")
        fill = to_decimal(remote.get("average") or remote.get("price"))
        qty = to_decimal(remote.get("filled") or remote.get("amount"))
        if remote.get("status") != "closed" or fill <= 0 or qty <= 0:
            self.store.update_order(entry_id, status=str(remote.get("status")),
                                    exchange_id=str(remote.get("id")))
            return Outcome("failed", it.symbol, it.signal_id,
                           f"entry not filled (status {remote.get('status')})")
        self.store.update_order(entry_id, status="filled", exchange_id=str(remote["id"]),
                                avg_price=fill, quantity=qty)
        return self._protect(it, fill, qty)

    def _protect(self, it: TradeIntent, fill: Decimal, qty: Decimal) -> Outcome:
        lev = self.settings.leverage
        stop, take = bracket_prices(it.side, fill, Decimal(str(lev.stop_loss_percent)),
                                    Decimal(str(lev.take_profit_percent)),
                                    self.gw.tick_size(it.symbol))
        key = it.idempotency_key
        sl_id, tp_id = client_order_id("p95s", key), client_order_id("p95t", key)
        try:
            self._place_bracket(it, "stop_loss", "STOP_MARKET", sl_id, stop, qty)
        except (ccxt.ExchangeError, ExchangeUnavailable) as exc:
            log.critical("stop-loss for %s failed (%s): closing the position", it.symbol, exc)
            self._flatten(it.symbol, it.side, qty, client_order_id("p95x", key), it.signal_id)
            self.store.close_position(it.symbol, exit_price=None, realized_pnl=None,
                                      reason="stop_loss_failed")
            return Outcome("failed", it.symbol, it.signal_id,
                           f"stop-loss could not be placed ({exc}); position closed")
        tp_error = ""
        try:
            self._place_bracket(it, "take_profit", "TAKE_PROFIT_MARKET", tp_id, take, qty)
        except (ccxt.ExchangeError, ExchangeUnavailable) as exc:
            tp_error = f"take-profit not placed: {exc}"
            log.error("%s %s", it.symbol, tp_error)
        armed = {o.get("clientOrderId") for o in self.gw.call(
            self.gw.client.fetch_open_orders, it.symbol, None, None, {"trigger": True})}
        liq = self._liquidation_price(it.symbol)
        position = self.store.open_position(PositionRow(
            signal_id=it.signal_id, symbol=it.symbol, side=it.side, quantity=qty,
            entry_price=fill, leverage=it.leverage, margin=qty * fill / it.leverage,
            stop_loss=stop, take_profit=take, liquidation_price=liq, status="open"))
        details = _position_details(position)
        details.update(sl_client_id=sl_id, tp_client_id=tp_id,
                       stop_loss_armed=sl_id in armed, take_profit_armed=tp_id in armed)
        return Outcome("opened", it.symbol, it.signal_id, tp_error, details)

    def _place_bracket(self, it: TradeIntent, kind: str, order_type: str, cid: str,
                       trigger: Decimal, qty: Decimal) -> None:
        if self._find_order(it.symbol, cid, trigger=True) is not None:
            return
        side = _order_side(it.side, closing=True)
        self.store.record_pending(OrderRecord(cid, it.signal_id, it.symbol, kind, side.upper(),
                                              order_type, qty, trigger))
        try:
            order = self.gw.call(self.gw.client.create_order, it.symbol, order_type, side,
                                 float(qty), None,
                                 {"triggerPrice": float(trigger), "reduceOnly": True,
                                  "clientOrderId": cid, "workingType": "MARK_PRICE"})
        except (ccxt.ExchangeError, ExchangeUnavailable) as exc:
            self.store.update_order(cid, status="rejected", error=str(exc))
            raise
        self.store.update_order(cid, status="open", exchange_id=str(order.get("id")))

    def _find_order(self, symbol: str, cid: str, *, trigger: bool) -> dict[str, Any] | None:
        params: dict[str, Any] = {"clientOrderId": cid}
        if trigger:
            params["trigger"] = True
        try:
            return self.gw.call(self.gw.client.fetch_order, None, symbol, params)
        except ccxt.OrderNotFound:
            return None

    def preflight(self, symbol: str) -> None:
        """Isolated margin and the configured leverage, confirmed by the exchange."""
        if symbol in self._prepared:
            return
        lev = self.settings.leverage.leverage
        reply = self.gw.call(self.gw.client.set_leverage, lev, symbol)
        if int(reply.get("leverage", 0)) != lev:
            raise ccxt.ExchangeError(f"{symbol}: leverage read back {reply.get('leverage')}")
        try:
            self.gw.call(self.gw.client.set_margin_mode, "isolated", symbol)
        except ccxt.MarginModeAlreadySet:
            pass
        self._prepared.add(symbol)

    def _liquidation_price(self, symbol: str) -> Decimal | None:
        for p in self.gw.positions():
            if p["info"].get("symbol") == symbol:
                return to_decimal(p.get("liquidationPrice"))
        return None

    # --- closing ---
    def close(self, symbol: str, reason: str = "manual") -> Outcome:
        with self.lock.hold(symbol):
            position = next((p for p in self.gw.positions()
                             if p["info"].get("symbol") == symbol), None)
            self._cancel_brackets(symbol)
            if position is None:
                self.store.close_position(symbol, exit_price=None, realized_pnl=None,
                                          reason="reconciliation")
                return Outcome("nothing_to_close", symbol, "")
            side = "LONG" if position["side"] == "long" else "SHORT"
            qty = to_decimal(position["contracts"])
            order = self._flatten(symbol, side, qty, client_order_id("p95c", uuid.uuid4().hex),
                                  "")
            exit_price = to_decimal(order.get("average"))
            entry = to_decimal(position.get("entryPrice"))
            sign = 1 if side == "LONG" else -1
            pnl = (exit_price - entry) * qty * sign
            row = self.store.close_position(symbol, exit_price=exit_price, realized_pnl=pnl,
                                            reason=reason)
            return Outcome("closed", symbol, row.signal_id if row else "", reason,
                           {"exit_price": str(exit_price), "realized_pnl": str(pnl),
                            "quantity": str(qty), "side": side})

    def _cancel_brackets(self, symbol: str) -> None:
        for order in self.gw.call(self.gw.client.fetch_open_orders, symbol, None, None,
                                  {"trigger": True}):
            with contextlib.suppress(ccxt.OrderNotFound):
                self.gw.call(self.gw.client.cancel_order, order["id"], symbol,
                             {"trigger": True})

    def _flatten(self, symbol: str, side: str, qty: Decimal, cid: str,
                 signal_id: str) -> dict[str, Any]:
        close_side = _order_side(side, closing=True)
        self.store.record_pending(OrderRecord(cid, signal_id, symbol, "close",
                                              close_side.upper(), "MARKET", qty))
        order = self.gw.call(self.gw.client.create_order, symbol, "market", close_side,
                             float(qty), None, {"reduceOnly": True, "clientOrderId": cid})
        self.store.update_order(cid, status="filled", exchange_id=str(order.get("id")),
                                avg_price=to_decimal(order.get("average")))
        return order

    # --- views ---
    def positions(self) -> list[PositionView]:
        ours = {p.symbol: p for p in self.store.open_positions()}
        views: list[PositionView] = []
        for p in self.gw.positions():
            symbol = str(p["info"].get("symbol"))
            row = ours.get(symbol)
            views.append(PositionView(
                symbol=symbol,
                side="LONG" if p.get("side") == "long" else "SHORT",
                quantity=str(to_decimal(p.get("contracts"))),
                entry_price=str(to_decimal(p.get("entryPrice"))),
                mark_price=str(to_decimal(p.get("markPrice"))),
                unrealized_pnl=str(to_decimal(p.get("unrealizedPnl"))),
                leverage=row.leverage if row else self.settings.leverage.leverage,
                margin=str(to_decimal(p.get("initialMargin") or p.get("collateral"))),
                liquidation_price=str(to_decimal(p.get("liquidationPrice"))),
                stop_loss=str(row.stop_loss) if row and row.stop_loss else None,
                take_profit=str(row.take_profit) if row and row.take_profit else None,
                signal_id=row.signal_id if row else "",
            ))
        return views


def _position_details(row: PositionRow) -> dict[str, Any]:
    return {
        "side": row.side, "quantity": str(row.quantity), "entry_price": str(row.entry_price),
        "stop_loss": str(row.stop_loss), "take_profit": str(row.take_profit),
        "liquidation_price": str(row.liquidation_price), "margin": str(row.margin),
        "leverage": row.leverage,
    }
