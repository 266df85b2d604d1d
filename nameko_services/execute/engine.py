"""Execution engine: idempotent entry + reduce-only SL/TP algo orders, and closing.

Idempotency: every order's client id derives from the signal's idempotency key, so a
redelivered intent finds its own order (database first, then the exchange) instead of
sending a second one; a per-symbol Redis lock serialises every execute instance.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import ccxt
import redis

from nameko_services.execute.exchange_ops import ExchangeOps, PreflightError, order_side
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
    status: str  # opened | duplicate | failed | blocked | closed | nothing_to_close
    symbol: str
    signal_id: str
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def bracket_ids(idempotency_key: str) -> dict[str, str]:
    return {"entry": client_order_id("p95e", idempotency_key),
            "stop_loss": client_order_id("p95s", idempotency_key),
            "take_profit": client_order_id("p95t", idempotency_key),
            "emergency": client_order_id("p95x", idempotency_key)}


class ExecutionEngine:
    def __init__(self, settings: Settings, gateway: ExchangeGateway, store: TradeStore,
                 lock: SymbolLock) -> None:
        self.settings = settings
        self.gw = gateway
        self.store = store
        self.lock = lock
        self.ops = ExchangeOps(settings, gateway, store)
        self.blocked: dict[str, str] = {}

    # --- opening ---
    def open(self, intent: TradeIntent) -> Outcome:
        if intent.symbol in self.blocked:
            return Outcome("blocked", intent.symbol, intent.signal_id,
                           f"symbol blocked: {self.blocked[intent.symbol]}")
        with self.lock.hold(intent.symbol):
            return self._open_locked(intent)

    def _open_locked(self, it: TradeIntent) -> Outcome:
        ids = bracket_ids(it.idempotency_key)
        known = self.store.order(ids["entry"])
        if known is not None and known.status == "filled":
            position = self.store.position_for_signal(known.signal_id)
            if position is not None:
                return Outcome("duplicate", it.symbol, known.signal_id, "already executed",
                               position_details(position))
        remote = self.ops.find_order(it.symbol, ids["entry"], trigger=False)
        fresh = remote is None
        if remote is None:
            try:
                self.ops.preflight(it.symbol)
            except PreflightError as exc:
                self.blocked[it.symbol] = str(exc)
                return Outcome("blocked", it.symbol, it.signal_id, f"pre-flight failed: {exc}")
            self.store.record_pending(OrderRecord(ids["entry"], it.signal_id, it.symbol,
                                                  "entry", order_side(it.side).upper(),
                                                  "MARKET", it.quantity))
            try:
                remote = self.gw.call(self.gw.client.create_order, it.symbol, "market",
                                      order_side(it.side), float(it.quantity), None,
                                      {"clientOrderId": ids["entry"]})
            except ccxt.ExchangeError as exc:
                self.store.update_order(ids["entry"], status="rejected", error=str(exc))
                return Outcome("failed", it.symbol, it.signal_id, f"entry rejected: {exc}")
        fill = to_decimal(remote.get("average") or remote.get("price"))
        qty = to_decimal(remote.get("filled") or remote.get("amount"))
        if remote.get("status") != "closed" or fill <= 0 or qty <= 0:
            self.store.update_order(ids["entry"], status=str(remote.get("status")),
                                    exchange_id=str(remote.get("id")))
            return Outcome("failed", it.symbol, it.signal_id,
                           f"entry not filled (status {remote.get('status')})")
        self.store.update_order(ids["entry"], status="filled", exchange_id=str(remote["id"]),
                                avg_price=fill, quantity=qty)
        filled_at = int(remote.get("lastTradeTimestamp") or remote.get("timestamp") or 0)
        outcome = self._protect(it, ids, fill, qty, look_first=not fresh)
        outcome.details["filled_at"] = filled_at
        return outcome

    def _protect(self, it: TradeIntent, ids: dict[str, str], fill: Decimal, qty: Decimal,
                 *, look_first: bool) -> Outcome:
        """Arm SL (or close at once) then TP; both read back from the exchange."""
        lev = self.settings.leverage
        stop, take = bracket_prices(it.side, fill, Decimal(str(lev.stop_loss_percent)),
                                    Decimal(str(lev.take_profit_percent)),
                                    self.gw.tick_size(it.symbol))
        try:
            self.ops.place_bracket(it.signal_id, it.symbol, it.side, "stop_loss",
                                   ids["stop_loss"], stop, qty, look_first=look_first)
        except (ccxt.ExchangeError, ExchangeUnavailable) as exc:
            log.critical("stop-loss for %s failed (%s): closing the position", it.symbol, exc)
            self.ops.flatten(it.symbol, it.side, qty, ids["emergency"], it.signal_id)
            return Outcome("failed", it.symbol, it.signal_id,
                           f"stop-loss could not be placed ({exc}); position closed")
        tp_error = ""
        try:
            self.ops.place_bracket(it.signal_id, it.symbol, it.side, "take_profit",
                                   ids["take_profit"], take, qty, look_first=look_first)
        except (ccxt.ExchangeError, ExchangeUnavailable) as exc:
            tp_error = f"take-profit not placed: {exc}"
            log.error("%s %s", it.symbol, tp_error)
        armed = {o.get("clientOrderId") for o in self.ops.open_algo_orders(it.symbol)}
        remote = self.ops.position(it.symbol)
        liq = to_decimal(remote.get("liquidationPrice")) if remote else None
        position = self.store.open_position(PositionRow(
            signal_id=it.signal_id, symbol=it.symbol, side=it.side, quantity=qty,
            entry_price=fill, leverage=it.leverage, margin=qty * fill / it.leverage,
            stop_loss=stop, take_profit=take, liquidation_price=liq, status="open"))
        details = position_details(position)
        details.update(sl_client_id=ids["stop_loss"], tp_client_id=ids["take_profit"],
                       stop_loss_armed=ids["stop_loss"] in armed,
                       take_profit_armed=ids["take_profit"] in armed)
        return Outcome("opened", it.symbol, it.signal_id, tp_error, details)

    # --- closing ---
    def close(self, symbol: str, reason: str = "manual") -> Outcome:
        with self.lock.hold(symbol):
            self.ops.cancel_algo_orders(symbol)
            position = self.ops.position(symbol)
            row = self.store.open_position_for(symbol)
            if position is None:
                if row is not None:
                    self.store.close_position(symbol, exit_price=None, realized_pnl=None,
                                              fees=None, reason="reconciliation")
                return Outcome("nothing_to_close", symbol, row.signal_id if row else "")
            side = "LONG" if position["side"] == "long" else "SHORT"
            qty = to_decimal(position["contracts"])
            since = int(row.opened_at.timestamp() * 1000) - 1000 if row else \
                int(time.time() * 1000) - 86_400_000
            self.ops.flatten(symbol, side, qty, client_order_id("p95c", uuid.uuid4().hex),
                             row.signal_id if row else "")
            entry = self.store.order_for(row.signal_id, "entry") if row else None
            settled = self.ops.settle(symbol, side, since,
                                      entry.exchange_id if entry is not None else None)
            closed = self.store.close_position(symbol, exit_price=settled.exit_price,
                                               realized_pnl=settled.realized_pnl,
                                               fees=settled.fees, reason=reason)
            return Outcome("closed", symbol, closed.signal_id if closed else "", reason,
                           {"exit_price": str(settled.exit_price),
                            "realized_pnl": str(settled.realized_pnl),
                            "fees": str(settled.fees), "quantity": str(qty), "side": side})

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


def position_details(row: PositionRow) -> dict[str, Any]:
    return {
        "side": row.side, "quantity": str(row.quantity), "entry_price": str(row.entry_price),
        "stop_loss": str(row.stop_loss), "take_profit": str(row.take_profit),
        "liquidation_price": str(row.liquidation_price), "margin": str(row.margin),
        "leverage": row.leverage,
    }
