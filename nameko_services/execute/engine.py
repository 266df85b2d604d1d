"""Execution engine: idempotent entry + reduce-only SL/TP algo orders, and closing.

A warm alert costs three REST requests, two round trips deep: the entry (its RESULT
answer carries the fill), then stop-loss and take-profit at once. Pre-flight is done at
start-up (or first use); nothing is read back.

Idempotency: every order's client id derives from the signal's idempotency key and is
recorded before it is sent, so a redelivered intent finds its own order (database first,
then the exchange) instead of sending a second one; a per-symbol Redis lock serialises
every execute instance.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import ccxt
import redis

from nameko_services.execute.exchange_ops import (
    ExchangeOps,
    Fill,
    Leg,
    PreflightError,
    order_side,
)
from nameko_services.execute.store import EntryFill, OrderRecord, TradeStore
from shared.db import PositionRow
from shared.exchange import client_order_id
from shared.market import ExchangeGateway, ExchangeUnavailable
from shared.models import PositionView, TradeIntent
from shared.money import bracket_prices, liquidation_price
from shared.names import SYMBOL_LOCK_PREFIX
from shared.settings import Settings
from shared.state import Account, Order, Position, Price, now_ms

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


@dataclass(frozen=True)
class Snapshot:
    """Open positions and open algo orders of the account, and where they came from."""

    positions: dict[str, Position]
    algo_orders: list[Order]
    source: str  # state | rest

    def armed(self, symbol: str) -> dict[str, Order]:
        """The symbol's open algo orders by client id."""
        return {o.client_id: o for o in self.algo_orders if o.symbol == symbol and o.is_open}


class AccountSource(Protocol):
    """The feed's account state (:class:`shared.state.StateReader`)."""

    max_age_ms: int

    def account(self, *, now: int | None = None, fresh: bool = True) -> Account: ...

    def prices(self) -> dict[str, Price]: ...


class ExecutionEngine:
    def __init__(self, settings: Settings, gateway: ExchangeGateway, store: TradeStore,
                 lock: SymbolLock, state: AccountSource | None = None) -> None:
        self.settings = settings
        self.gw = gateway
        self.store = store
        self.lock = lock
        self.state = state
        self.ops = ExchangeOps(settings, gateway, store)
        self.blocked: dict[str, str] = {}

    # --- start-up ---
    def prepare(self, symbols: tuple[str, ...]) -> None:
        """Pre-flight every traded symbol now, so an alert's path is its orders alone.

        An exchange that cannot be reached is not fatal: the symbol is prepared at its
        first use instead. A symbol whose account set-up is wrong is blocked.
        """
        for symbol in symbols:
            try:
                self.ops.preflight(symbol)
            except PreflightError as exc:
                self.blocked[symbol] = f"pre-flight failed: {exc}"
                log.critical("%s blocked: %s", symbol, exc)
            except (ExchangeUnavailable, ccxt.BaseError) as exc:
                log.warning("pre-flight of %s postponed to its first use: %s", symbol, exc)

    # --- opening ---
    def open(self, intent: TradeIntent) -> Outcome:
        if intent.symbol in self.blocked:
            return Outcome("blocked", intent.symbol, intent.signal_id,
                           f"symbol blocked: {self.blocked[intent.symbol]}")
        with self.lock.hold(intent.symbol):
            return self._open_locked(intent)

    def _open_locked(self, it: TradeIntent) -> Outcome:
        ids = bracket_ids(it.idempotency_key)
        # durable before it is sent: the one write ahead of the entry (None: a first attempt)
        known = self.store.claim(OrderRecord(ids["entry"], it.signal_id, it.symbol, "entry",
                                             order_side(it.side).upper(), "MARKET",
                                             it.quantity))
        if known is not None and known.status == "filled":
            position = self.store.position_for_signal(known.signal_id)
            if position is not None:
                return Outcome("duplicate", it.symbol, known.signal_id, "already executed",
                               position_details(position))
        fill: Fill | None = None
        if known is not None:
            # a redelivery or a restart: the entry may have reached the exchange already
            found = self.ops.find_order(it.symbol, ids["entry"], trigger=False)
            fill = Fill(found, 0) if found is not None else None
        if fill is None:
            try:
                self.ops.preflight(it.symbol)  # in memory once the symbol is prepared
            except PreflightError as exc:
                self.blocked[it.symbol] = str(exc)
                self.store.update_order(ids["entry"], status="rejected", error=str(exc))
                return Outcome("blocked", it.symbol, it.signal_id, f"pre-flight failed: {exc}")
            try:
                fill = self.ops.market(it.symbol, order_side(it.side), it.quantity,
                                       ids["entry"])
            except ccxt.ExchangeError as exc:
                self.store.update_order(ids["entry"], status="rejected", error=str(exc))
                return Outcome("failed", it.symbol, it.signal_id, f"entry rejected: {exc}")
        entry = fill.order
        price, qty = entry.avg_price or Decimal(0), entry.filled
        if entry.status != "FILLED" or price <= 0 or qty <= 0:
            self.store.update_order(ids["entry"], status=entry.status.lower(),
                                    exchange_id=entry.order_id)
            return Outcome("failed", it.symbol, it.signal_id,
                           f"entry not filled (status {entry.status})")
        outcome = self._protect(it, ids, EntryFill(ids["entry"], entry.order_id, price, qty),
                                look_first=known is not None)
        outcome.details["filled_at"] = fill.at_ms
        return outcome

    def _protect(self, it: TradeIntent, ids: dict[str, str], entry: EntryFill, *,
                 look_first: bool) -> Outcome:
        """SL and TP sent together; a stop that cannot be placed closes the position.

        Nothing is read back: the answers say the orders were accepted, the user-data
        stream confirms them armed (see events.py), and the liquidation price is
        Binance's formula on the fill and the leverage tiers loaded at pre-flight. The
        fill, both legs and the position are booked in one transaction afterwards.
        """
        lev = self.settings.leverage
        fill, qty = entry.avg_price, entry.quantity
        stop, take = bracket_prices(it.side, fill, Decimal(str(lev.stop_loss_percent)),
                                    Decimal(str(lev.take_profit_percent)),
                                    self.gw.tick_size(it.symbol))
        legs = (Leg("stop_loss", ids["stop_loss"], stop),
                Leg("take_profit", ids["take_profit"], take))
        placed = self.ops.arm(it.symbol, it.side, qty, legs, look_first=look_first)
        armed_at = now_ms()  # protected from here on; the book's write follows
        booked = self.ops.booked(it.signal_id, it.symbol, it.side, qty, legs, placed)
        sl, tp = placed["stop_loss"], placed["take_profit"]
        for result in (sl, tp):
            if isinstance(result, BaseException) and not isinstance(
                    result, (ccxt.ExchangeError, ExchangeUnavailable)):
                self.store.book(booked, entry=entry)
                raise result
        if isinstance(sl, BaseException):
            self.store.book(booked, entry=entry)
            log.critical("stop-loss for %s failed (%s): closing the position", it.symbol, sl)
            self.ops.flatten(it.symbol, it.side, qty, ids["emergency"], it.signal_id)
            return Outcome("failed", it.symbol, it.signal_id,
                           f"stop-loss could not be placed ({sl}); position closed")
        tp_error = ""
        if isinstance(tp, BaseException):
            tp_error = f"take-profit not placed: {tp}"
            log.error("%s %s", it.symbol, tp_error)
        liq = liquidation_price(it.side, fill, qty, it.leverage, self.ops.brackets(it.symbol))
        position = self.store.book(booked, entry=entry, position=PositionRow(
            signal_id=it.signal_id, symbol=it.symbol, side=it.side, quantity=qty,
            entry_price=fill, leverage=it.leverage, margin=qty * fill / it.leverage,
            stop_loss=stop, take_profit=take, liquidation_price=liq, status="open"))
        assert position is not None
        details = position_details(position)
        details.update(sl_client_id=ids["stop_loss"], tp_client_id=ids["take_profit"],
                       stop_loss_armed=sl.is_open,
                       take_profit_armed=isinstance(tp, Order) and tp.is_open,
                       armed_at=armed_at)
        return Outcome("opened", it.symbol, it.signal_id, tp_error, details)

    # --- closing ---
    def close(self, symbol: str, reason: str = "manual") -> Outcome:
        with self.lock.hold(symbol):
            self.ops.cancel_algo_orders(symbol)
            position = next((p for p in self.gw.open_positions() if p.symbol == symbol), None)
            row = self.store.open_position_for(symbol)
            if position is None:
                if row is not None:
                    self.store.close_position(symbol, exit_price=None, realized_pnl=None,
                                              fees=None, reason="reconciliation")
                return Outcome("nothing_to_close", symbol, row.signal_id if row else "")
            side, qty = position.side, position.quantity
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

    # --- account ---
    def snapshot(self) -> Snapshot:
        """The account from the feed's state while it is fresh, else one REST snapshot."""
        if self.state is not None:
            try:
                account: Account | None = self.state.account(fresh=False)
            except redis.RedisError as exc:
                log.warning("account state unreadable (%s): asking the exchange", exc)
                account = None
            if account is not None and account.as_of_ms and \
                    now_ms() - account.as_of_ms <= self.state.max_age_ms:
                return Snapshot({p.symbol: p for p in account.positions},
                                account.open_orders(kind="algo"), "state")
        return Snapshot({p.symbol: p for p in self.gw.open_positions()},
                        self.gw.open_orders(None), "rest")

    # --- views ---
    def positions(self) -> list[PositionView]:
        ours = {p.symbol: p for p in self.store.open_positions()}
        snap = self.snapshot()
        prices: dict[str, Price] = {}
        if self.state is not None:
            with contextlib.suppress(redis.RedisError):
                prices = self.state.prices()
        views: list[PositionView] = []
        for symbol, p in sorted(snap.positions.items()):
            row = ours.get(symbol)
            leverage = row.leverage if row else p.leverage or self.settings.leverage.leverage
            liq = p.liquidation_price or (row.liquidation_price if row else None) or \
                p.liquidation(self.ops.brackets(symbol), leverage)
            price = prices.get(symbol)
            mark = (price.mark or price.last) if price is not None else None
            views.append(PositionView(
                symbol=symbol, side=p.side, quantity=str(p.quantity),
                entry_price=str(p.entry_price), mark_price=str(mark or p.entry_price),
                unrealized_pnl=str(p.unrealized_pnl), leverage=leverage,
                margin=str(p.isolated_wallet or (row.margin if row else 0)),
                liquidation_price=str(liq),
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
