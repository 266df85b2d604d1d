"""Execution engine: idempotent entry + reduce-only SL/TP algo orders, and closing.

A warm alert costs three REST requests, two round trips deep: the entry (its RESULT
answer carries the fill), then stop-loss and take-profit at once. Pre-flight is done at
start-up (or first use); nothing is read back.

Idempotency: every order's client id derives from the signal's idempotency key, scoped
by strategy and symbol, and is recorded before it is sent, so a redelivered intent finds
its own order (database first, then the exchange) instead of sending a second one; a
per-symbol Redis lease serialises every execute instance. Every intent ends in one
recorded outcome: opened, duplicate (a redelivery), failed or blocked, with its reason.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
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
from nameko_services.execute.guards import Blocks, LockBusy, SymbolLock
from nameko_services.execute.store import EntryFill, OrderRecord, TradeStore, age_seconds
from shared.db import OrderRow, PositionRow
from shared.exchange import client_order_id
from shared.market import ExchangeGateway, ExchangeUnavailable
from shared.models import PositionView, TradeIntent
from shared.money import bracket_prices, liquidation_price
from shared.names import EXECUTE_BLOCKS_KEY, IDEMPOTENCY_WINDOW_S
from shared.settings import Settings
from shared.state import Account, Order, Position, Price, now_ms

__all__ = ["ExecutionEngine", "LockBusy", "Outcome", "SymbolLock", "bracket_ids",
           "intent_ids", "is_retryable"]

log = logging.getLogger(__name__)

# an entry's book status after which the intent is done without a position
FAILED_ENTRY = frozenset({"rejected", "expired", "canceled"})
# the exchange's status of a market entry that filled in part and is over
PARTIAL_END = frozenset({"EXPIRED", "CANCELED", "PARTIALLY_FILLED"})


def is_retryable(exc: BaseException) -> bool:
    """A failure worth trying again: the exchange unreachable, 5xx, 429, a clock skew,
    Binance's -1001 "internal error, try again" (ccxt's OperationFailed, the parent of its
    network errors), the symbol locked. Anything else the exchange says is a refusal: a
    failed outcome. A retried entry is looked up by its client id before it is resent."""
    return isinstance(exc, (ExchangeUnavailable, ccxt.OperationFailed, LockBusy))


@dataclass
class Outcome:
    status: str  # opened | duplicate | failed | blocked | closed | nothing_to_close
    symbol: str
    signal_id: str
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def intent_ids(it: TradeIntent) -> dict[str, str]:
    """The intent's client ids: its alert id scoped by strategy and symbol, so the same
    id in two strategies (or symbols) is two trades, not a duplicate."""
    return bracket_ids(it.scoped_key)


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
                 lock: SymbolLock, state: AccountSource | None = None,
                 blocks_key: str = EXECUTE_BLOCKS_KEY) -> None:
        self.settings = settings
        self.gw = gateway
        self.store = store
        self.lock = lock
        self.state = state
        self.ops = ExchangeOps(settings, gateway, store)
        self.blocks = Blocks(lock.redis, blocks_key)

    def block_reason(self, symbol: str) -> str | None:
        """Why ``symbol`` is blocked (a failed pre-flight, seen by every instance)."""
        return self.blocks.reason(symbol)

    # --- start-up ---
    def prepare(self, symbols: tuple[str, ...]) -> None:
        """Pre-flight every traded symbol now, so an alert's path is its orders alone.

        An exchange that cannot be reached is not fatal: the symbol is prepared at its
        first use instead. A symbol whose account set-up is wrong is blocked until a
        later pre-flight (the next alert's) passes.
        """
        for symbol in symbols:
            try:
                self.ops.preflight(symbol)
                self.blocks.lift(symbol)
            except PreflightError as exc:
                self.blocks.block(symbol, f"pre-flight failed: {exc}")
                log.critical("%s blocked: %s", symbol, exc)
            except (ExchangeUnavailable, ccxt.BaseError) as exc:
                log.warning("pre-flight of %s postponed to its first use: %s", symbol, exc)

    # --- opening ---
    def open(self, intent: TradeIntent) -> Outcome:
        """Trade the intent, or say why not. Retryable failures (exchange unreachable,
        symbol locked) raise; an exchange refusal is a failed outcome, never an exception."""
        with self.lock.hold(intent.symbol):
            try:
                return self._open_locked(intent)
            except Exception as exc:
                if is_retryable(exc) or not isinstance(exc, ccxt.BaseError):
                    raise
                # the entry row is left as it is: if the entry filled, a redelivery or
                # the sweep finds it and protects the position
                log.error("%s refused by the exchange: %s", intent.signal_id, exc)
                return Outcome("failed", intent.symbol, intent.signal_id,
                               f"exchange refused: {exc}")

    def _entry_done(self, cid: str, status: str, reason: str) -> None:
        """Record a failed end on an entry that never filled (a filled one stays filled)."""
        row = self.store.order(cid)
        if row is not None and row.status == "pending":
            self.store.update_order(cid, status=status, error=reason)

    def _refusal(self, it: TradeIntent, known: OrderRow | None) -> Outcome | None:
        """What the book says about the intent before anything is sent."""
        if known is None:
            return None
        if known.signal_id != it.signal_id:
            # brain forgets an alert id after its window; the client id would be reused
            age = age_seconds(known.created_at)
            why = ("idempotency key reused after the window" if age > IDEMPOTENCY_WINDOW_S
                   else "idempotency key already used")
            return Outcome("failed", it.symbol, it.signal_id,
                           f"{why}: {it.idempotency_key} traded as signal {known.signal_id} "
                           f"{age / 3600:.1f} h ago")
        if known.status in FAILED_ENTRY:  # a redelivery of a finished failure
            return Outcome("failed", it.symbol, it.signal_id, known.error or known.status)
        if known.status == "filled":
            position = self.store.position_for_signal(known.signal_id)
            if position is not None:
                return Outcome("duplicate", it.symbol, known.signal_id, "already executed",
                               position_details(position))
        return None

    def _expired(self, it: TradeIntent) -> bool:
        if it.received_at is None:
            return False
        limit = self.settings.phoenix_95.analysis_timeout
        return time.time() - it.received_at.timestamp() > limit

    def _ready(self, it: TradeIntent, cid: str) -> Outcome | None:
        """Pre-flight, in memory once prepared; a blocked symbol is pre-flighted again,
        and the block lifts for every instance when it passes."""
        blocked = self.blocks.reason(it.symbol)
        try:
            self.ops.preflight(it.symbol, force=blocked is not None)
        except ccxt.ExchangeError as exc:  # refused (a key without rights): nothing sent
            self._entry_done(cid, "rejected", f"pre-flight refused: {exc}")
            return Outcome("failed", it.symbol, it.signal_id, f"pre-flight refused: {exc}")
        except PreflightError as exc:
            self.blocks.block(it.symbol, f"pre-flight failed: {exc}")
            self._entry_done(cid, "rejected", f"pre-flight failed: {exc}")
            return Outcome("blocked", it.symbol, it.signal_id, f"pre-flight failed: {exc}")
        if blocked is not None:
            self.blocks.lift(it.symbol)
            log.warning("%s unblocked: pre-flight passes again", it.symbol)
        return None

    def _open_locked(self, it: TradeIntent) -> Outcome:
        ids = intent_ids(it)
        known = self.store.order(ids["entry"])
        refusal = self._refusal(it, known)
        if refusal is not None:
            return refusal
        fill: Fill | None = None
        if known is not None:
            # a redelivery or a restart: the entry may have reached the exchange already
            found = self.ops.find_order(it.symbol, ids["entry"], trigger=False)
            fill = Fill(found, 0) if found is not None else None
        if fill is None:
            # durable before it is sent: the one write ahead of the entry
            self.store.claim(OrderRecord(ids["entry"], it.signal_id, it.symbol, "entry",
                                         order_side(it.side).upper(), "MARKET", it.quantity))
            if self._expired(it):
                self._entry_done(ids["entry"], "expired", "intent_expired")
                return Outcome("failed", it.symbol, it.signal_id, "intent_expired")
            refusal = self._ready(it, ids["entry"])
            if refusal is not None:
                return refusal
            try:
                fill = self.ops.market(it.symbol, order_side(it.side), it.quantity,
                                       ids["entry"])
            except ccxt.ExchangeError as exc:
                self._entry_done(ids["entry"], "rejected", f"entry rejected: {exc}")
                return Outcome("failed", it.symbol, it.signal_id, f"entry rejected: {exc}")
        entry = fill.order
        price, qty = entry.avg_price or Decimal(0), entry.filled
        filled = entry.status == "FILLED" or entry.status in PARTIAL_END
        if not filled or price <= 0 or qty <= 0:
            reason = f"entry not filled (status {entry.status})"
            self.store.update_order(ids["entry"], status=entry.status.lower(),
                                    exchange_id=entry.order_id, error=reason)
            return Outcome("failed", it.symbol, it.signal_id, reason)
        if qty < it.quantity:  # a partial fill is protected at once, for what filled
            log.warning("%s entry filled %s of %s (%s)", it.symbol, qty, it.quantity,
                        entry.status)
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
                    result, (ccxt.BaseError, ExchangeUnavailable)):
                self.store.book(booked, entry=entry)
                raise result
        if isinstance(sl, BaseException):
            self.store.book(booked, entry=entry)
            log.critical("stop-loss for %s failed (%s): closing the position", it.symbol, sl)
            # protective: past an open circuit, with its own retries (exchange_ops.flatten)
            self.ops.flatten(it.symbol, it.side, qty, ids["emergency"], it.signal_id)
            if isinstance(tp, Order):
                # the take-profit went out beside the failed stop: left alone it would
                # reduce the next position on this symbol
                try:
                    self.ops.cancel_algo_orders(it.symbol, [tp])
                except (ccxt.BaseError, ExchangeUnavailable) as exc:
                    log.error("%s: take-profit %s of a closed position not cancelled (%s); "
                              "reconciliation cancels it", it.symbol, tp.client_id, exc)
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
        """Close the symbol's position: the reduce-only close first, then cancel what is
        left of the brackets; a close that fails leaves the position protected."""
        with self.lock.hold(symbol):
            position = next((p for p in self.gw.open_positions(protective=True)
                             if p.symbol == symbol), None)
            rows = self.store.open_positions_for(symbol)
            row = rows[-1] if rows else None
            if position is None:
                self.ops.cancel_algo_orders(symbol)
                for stale in rows:
                    self.store.close_position(stale.id, exit_price=None, realized_pnl=None,
                                              fees=None, reason="reconciliation")
                return Outcome("nothing_to_close", symbol, row.signal_id if row else "")
            side, qty = position.side, position.quantity
            since = int(row.opened_at.timestamp() * 1000) - 1000 if row else \
                int(time.time() * 1000) - 86_400_000
            self.ops.flatten(symbol, side, qty, client_order_id("p95c", uuid.uuid4().hex),
                             row.signal_id if row else "")
            self.ops.cancel_algo_orders(symbol)
            entry = self.store.order_for(row.signal_id, "entry") if row else None
            settled = self.ops.settle(symbol, side, since,
                                      entry.exchange_id if entry is not None else None)
            closed = None
            for open_row in rows:  # one net position: every row of the symbol ends here
                mine = open_row is row  # older rows' own fills predate the settled window
                closed = self.store.close_position(
                    open_row.id, exit_price=settled.exit_price,
                    realized_pnl=settled.realized_pnl if mine else None,
                    fees=settled.fees if mine else None,
                    reason=reason if mine else "reconciliation") or closed
            details = {"exit_price": str(settled.exit_price),
                       "realized_pnl": str(settled.realized_pnl),
                       "fees": str(settled.fees), "quantity": str(qty), "side": side}
            if settled.unconverted_fees:
                details["unconverted_fees"] = ", ".join(f"{v} {a}" for a, v in
                                                        settled.unconverted_fees)
            return Outcome("closed", symbol, closed.signal_id if closed else "", reason,
                           details)

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
        ours = {p.symbol: p for p in self.store.open_positions()}  # oldest first: newest wins
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
