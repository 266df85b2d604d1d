"""Reconciliation: make the database and the exchange agree, and keep positions protected.

Runs at start-up and on a timer, one symbol at a time under the symbol lock shared by
every execute instance:

* exchange flat, database open  -> book the close with its real PnL and reason
  (stop_loss / take_profit when that bracket fired, liquidation, else reconciliation)
  and cancel what is left of the bracket (Binance leaves the other leg resting);
* exchange open, database flat  -> adopt the position and protect it;
* both open                     -> re-arm a missing stop-loss or take-profit; a stop that
  can no longer be placed (price already beyond it) closes the position at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import ccxt

from nameko_services.execute.engine import ExecutionEngine, bracket_ids
from shared.db import PositionRow
from shared.market import ExchangeUnavailable, to_decimal
from shared.money import Side, bracket_prices

log = logging.getLogger(__name__)


@dataclass
class Correction:
    kind: str  # booked_close | adopted | rearmed | emergency_close
    symbol: str
    signal_id: str
    level: str  # info | warning | critical
    text: str
    details: dict[str, Any] = field(default_factory=dict)


class Reconciler:
    def __init__(self, engine: ExecutionEngine) -> None:
        self.engine = engine
        self.ops = engine.ops
        self.store = engine.store

    def run(self) -> list[Correction]:
        remote = {str(p["info"]["symbol"]) for p in self.engine.gw.positions()}
        ours = {row.symbol for row in self.store.open_positions()}
        corrections: list[Correction] = []
        for symbol in sorted(remote | ours):
            corrections.extend(self.run_symbol(symbol))
        return corrections

    def run_symbol(self, symbol: str) -> list[Correction]:
        with self.engine.lock.hold(symbol):
            remote = self.ops.position(symbol)
            row = self.store.open_position_for(symbol)
            if remote is None and row is not None:
                return [self._book_close(row)]
            if remote is not None and row is None:
                row = self._adopt(symbol, remote)
                return [Correction("adopted", symbol, row.signal_id, "critical",
                                   f"adopted unknown {row.side} {symbol} position "
                                   f"{row.quantity} @ {row.entry_price}; protecting it")]\
                    + self._ensure_brackets(row, remote)
            if remote is not None and row is not None:
                return self._ensure_brackets(row, remote)
            return []

    # --- exchange flat, database open ---
    def _book_close(self, row: PositionRow) -> Correction:
        since = int(row.opened_at.timestamp() * 1000) - 1000
        reason = self._close_reason(row, since)
        self.ops.cancel_algo_orders(row.symbol)
        entry = self.store.order_for(row.signal_id, "entry")
        settled = self.ops.settle(row.symbol, row.side, since,
                                  entry.exchange_id if entry is not None else None)
        self.store.close_position(row.symbol, exit_price=settled.exit_price,
                                  realized_pnl=settled.realized_pnl, fees=settled.fees,
                                  reason=reason)
        level = "critical" if reason in ("liquidation", "reconciliation") else "info"
        return Correction("booked_close", row.symbol, row.signal_id, level,
                          f"{row.symbol} {row.side} closed by {reason}: exit "
                          f"{settled.exit_price}, PnL {settled.realized_pnl} USDT",
                          {"reason": reason, "exit_price": str(settled.exit_price),
                           "realized_pnl": str(settled.realized_pnl),
                           "fees": str(settled.fees)})

    def _close_reason(self, row: PositionRow, since: int) -> str:
        for kind in ("stop_loss", "take_profit"):
            order = self.store.order_for(row.signal_id, kind)
            if order is None:
                continue
            remote = self.ops.find_order(row.symbol, order.client_order_id, trigger=True)
            if remote is not None and remote.get("status") == "closed":
                self.store.update_order(order.client_order_id, status="filled")
                return kind
        return "liquidation" if self.ops.was_liquidated(row.symbol, since) else "reconciliation"

    # --- exchange open, database flat ---
    def _adopt(self, symbol: str, remote: dict[str, Any]) -> PositionRow:
        """Book an unknown position: ours if a recorded entry order filled it, else foreign."""
        side: Side = "LONG" if remote["side"] == "long" else "SHORT"
        entry = to_decimal(remote.get("entryPrice"))
        qty = to_decimal(remote.get("contracts"))
        signal_id = f"adopted-{symbol}-{int(time.time())}"
        for order in self.store.recent_entries(symbol):
            sent = self.ops.find_order(symbol, order.client_order_id, trigger=False)
            if sent is not None and sent.get("status") == "closed":
                # our own entry, sent just before a crash: keep its signal and client ids
                self.store.update_order(order.client_order_id, status="filled",
                                        exchange_id=str(sent.get("id")),
                                        avg_price=to_decimal(sent.get("average")))
                signal_id = order.signal_id
                break
        lev = self.engine.settings.leverage
        stop, take = bracket_prices(side, entry, Decimal(str(lev.stop_loss_percent)),
                                    Decimal(str(lev.take_profit_percent)),
                                    self.engine.gw.tick_size(symbol))
        margin = to_decimal(remote.get("initialMargin") or remote.get("collateral"))
        return self.store.open_position(PositionRow(
            signal_id=signal_id, symbol=symbol, side=side, quantity=qty, entry_price=entry,
            leverage=int(remote.get("leverage") or lev.leverage), margin=margin,
            stop_loss=stop, take_profit=take,
            liquidation_price=to_decimal(remote.get("liquidationPrice")), status="open"))

    # --- both open ---
    def _ensure_brackets(self, row: PositionRow, remote: dict[str, Any]) -> list[Correction]:
        armed = {o.get("clientOrderId"): o for o in self.ops.open_algo_orders(row.symbol)}
        qty = to_decimal(remote.get("contracts"))
        out: list[Correction] = []
        for kind, trigger in (("stop_loss", row.stop_loss), ("take_profit", row.take_profit)):
            cid = self._bracket_id(row, kind)
            if cid in armed or trigger is None:
                continue
            try:
                self.ops.place_bracket(row.signal_id, row.symbol, row.side, kind, cid,
                                       trigger, qty, look_first=False)
            except (ccxt.OrderImmediatelyFillable, ccxt.InvalidOrder) as exc:
                # the price is already beyond the level: do what the order would have done
                self.ops.flatten(row.symbol, row.side, qty,
                                 bracket_ids(f"{row.signal_id}:{kind}")["emergency"],
                                 row.signal_id)
                closed = self._book_close(row)
                closed.kind, closed.level = "emergency_close", "critical"
                closed.text = f"{kind} of {row.symbol} could not be re-armed ({exc}); " \
                              f"closed at market. {closed.text}"
                return out + [closed]
            except ExchangeUnavailable:
                raise
            out.append(Correction("rearmed", row.symbol, row.signal_id,
                                  "critical" if kind == "stop_loss" else "warning",
                                  f"{kind} of {row.symbol} was missing; re-armed at {trigger}",
                                  {"kind": kind, "trigger": str(trigger)}))
        return out

    def _bracket_id(self, row: PositionRow, kind: str) -> str:
        """The bracket's deterministic client id: recorded, derived from the entry's, or new."""
        order = self.store.order_for(row.signal_id, kind)
        if order is not None:
            return order.client_order_id
        entry = self.store.order_for(row.signal_id, "entry")
        if entry is not None:
            # p95e-<digest> -> p95s-<digest> / p95t-<digest>: the ids open() would have used
            prefix = "p95s" if kind == "stop_loss" else "p95t"
            return prefix + entry.client_order_id[4:]
        return bracket_ids(f"{row.signal_id}:adopted")[kind]
