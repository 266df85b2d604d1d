"""Reconciliation: make the database and the exchange agree, and keep positions protected.

Event-driven: the user-data stream's records (events.py) start it for the symbol they
touch; a sweep at start-up and every ``exchange.reconcile_interval`` compares the book
with the feed's account state and asks the exchange only about symbols that disagree.
Each symbol is repaired under the symbol lock shared by every execute instance:

* exchange flat, database open  -> book the close with its real PnL and reason
  (stop_loss / take_profit when that bracket fired, liquidation, else reconciliation)
  and cancel what is left of the bracket (Binance leaves the other leg resting);
* exchange open, database flat  -> adopt the position and protect it;
* both open                     -> re-arm a missing stop-loss or take-profit; a stop that
  can no longer be placed (price already beyond it) closes the position at once; any
  other refusal is alerted, never answered with a market close.

A book position is its own entry's (its signal), never "the symbol's": when a bracket
fired and a new alert opened the same symbol before the close was booked, the book holds
two open rows. The old one is booked closed with its own fills (those before the new
entry's), only its own leftover bracket is cancelled, and the new one is left alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, get_args

import ccxt

from nameko_services.execute.engine import ExecutionEngine, bracket_ids
from nameko_services.execute.exchange_ops import Leg, is_duplicate_id
from nameko_services.execute.store import age_seconds
from shared.db import PositionRow
from shared.money import bracket_prices
from shared.state import Order, Position

log = logging.getLogger(__name__)

FIRED = ("triggered", "filled")  # a bracket's book status once it went off
FIRED_ON_EXCHANGE = frozenset({"TRIGGERED", "FINISHED", "FILLED"})
FIRED_GRACE_S = 30.0


def _with_next(rows: list[PositionRow]) -> list[tuple[PositionRow, PositionRow | None]]:
    """Each row with the one opened after it (None for the newest)."""
    return list(zip(rows, [*rows[1:], None], strict=False))


CorrectionKind = Literal["booked_close", "adopted", "rearmed", "emergency_close",
                         "rearm_failed"]
Level = Literal["info", "warning", "critical"]
CORRECTION_KINDS: frozenset[str] = frozenset(get_args(CorrectionKind))
# the corrections that end a position: each is reported as position_closed
CLOSING_KINDS: frozenset[CorrectionKind] = frozenset({"booked_close", "emergency_close"})


@dataclass
class Correction:
    """One repair reconciliation made; ``kind`` is one of :data:`CorrectionKind`."""

    kind: CorrectionKind
    symbol: str
    signal_id: str
    level: Level
    text: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in CORRECTION_KINDS or self.level not in get_args(Level):
            raise ValueError(f"unknown correction {self.kind!r} / level {self.level!r}")


class Reconciler:
    def __init__(self, engine: ExecutionEngine) -> None:
        self.engine = engine
        self.ops = engine.ops
        self.store = engine.store

    def sweep(self) -> list[Correction]:
        """The safety net behind the events: compare, and ask the exchange only on doubt.

        The account comes from the feed's state (one REST snapshot when it is stale); a
        symbol whose position and brackets agree with the book costs nothing, one that
        disagrees is re-read from the exchange under its lock and repaired.
        """
        snap = self.engine.snapshot()
        self.ops.refresh_reference()
        rows: dict[str, list[PositionRow]] = {}
        for row in self.store.open_positions():
            rows.setdefault(row.symbol, []).append(row)
        corrections: list[Correction] = []
        for symbol in sorted(set(snap.positions) | set(rows)):
            if not self._agrees(rows.get(symbol, []), snap.positions.get(symbol),
                                snap.armed(symbol)):
                corrections.extend(self.run_symbol(symbol))
        return corrections

    run = sweep

    def on_event(self, symbol: str) -> list[Correction]:
        """An exchange event touched a symbol we hold: repair it now.

        Adoption of a position we do not hold is left to the sweep: our own entry's
        events arrive before its position is booked.
        """
        return self.run_symbol(symbol, adopt=False)

    def run_symbol(self, symbol: str, *, adopt: bool = True) -> list[Correction]:
        with self.engine.lock.hold(symbol):
            rows = self.store.open_positions_for(symbol)
            if not rows and not adopt:
                return []
            remote = next((p for p in self.engine.gw.open_positions(protective=True)
                           if p.symbol == symbol), None)
            if remote is None:
                return [self._book_close(row, newer, cancel_all=True)
                        for row, newer in _with_next(rows)]
            out: list[Correction] = []
            alive: list[PositionRow] = []
            in_flight = False
            # the book matches the exchange on its face: only the book's word on the legs
            suspect = len(rows) > 1 or any(r.side != remote.side for r in rows)
            armed = {o.client_id for o in self.engine.gw.open_orders(symbol, protective=True)
                     if o.is_open}
            for row, newer in _with_next(rows):
                fired = self._fired(row, armed, look=suspect)
                if fired is None:
                    alive.append(row)
                elif newer is not None or fired[1]:
                    # closed by its bracket: the exchange's position is someone else's
                    out.append(self._book_close(row, newer, reason=fired[0]))
                else:
                    in_flight = True  # triggered, its close still on the way
            if not alive and not in_flight:
                if not adopt:
                    return out
                row = self._adopt(symbol, remote)
                out.append(Correction("adopted", symbol, row.signal_id, "critical",
                                      f"adopted unknown {row.side} {symbol} position "
                                      f"{row.quantity} @ {row.entry_price}; protecting it"))
                alive = [row]
            for row in alive:
                qty = remote.quantity if len(alive) == 1 else row.quantity
                out.extend(self._ensure_brackets(row, qty, armed))
            return out

    def _agrees(self, rows: list[PositionRow], remote: Position | None,
                armed: dict[str, Order]) -> bool:
        """One open row per position, with its brackets armed (two rows: a close of the
        older one is not booked yet, or a merged position; either way, look)."""
        if len(rows) != 1 or remote is None:
            return not rows and remote is None
        row = rows[0]
        return all(self._bracket_id(row, kind) in armed
                   for kind, trigger in (("stop_loss", row.stop_loss),
                                         ("take_profit", row.take_profit))
                   if trigger is not None)

    # --- exchange flat (or the row's bracket fired), database open ---
    def _book_close(self, row: PositionRow, newer: PositionRow | None, *,
                    reason: str | None = None, cancel_all: bool = False) -> Correction:
        """Book ``row`` closed with its own fills: from its entry's first trade to the
        next position's entry (``newer``); cancel its leftover legs (all the symbol's
        when the exchange is flat: nothing is left to protect)."""
        since = int(row.opened_at.timestamp() * 1000) - 1000
        reason = reason or self._close_reason(row, since)
        self.ops.cancel_algo_orders(row.symbol, client_ids=None if cancel_all else [
            self._bracket_id(row, kind) for kind in ("stop_loss", "take_profit")])
        entry = self.store.order_for(row.signal_id, "entry")
        until = self.store.order_for(newer.signal_id, "entry") if newer is not None else None
        settled = self.ops.settle(row.symbol, row.side, since,
                                  entry.exchange_id if entry is not None else None,
                                  until.exchange_id if until is not None else None)
        self.store.close_position(row.id, exit_price=settled.exit_price,
                                  realized_pnl=settled.realized_pnl, fees=settled.fees,
                                  reason=reason)
        level: Level = "critical" if reason in ("liquidation", "reconciliation") else "info"
        details = {"reason": reason, "exit_price": str(settled.exit_price),
                   "realized_pnl": str(settled.realized_pnl), "fees": str(settled.fees),
                   "side": row.side, "strategy": row.strategy}
        if settled.unconverted_fees:
            details["unconverted_fees"] = ", ".join(f"{v} {a}" for a, v in
                                                    settled.unconverted_fees)
        return Correction("booked_close", row.symbol, row.signal_id, level,
                          f"{row.symbol} {row.side} closed by {reason}: exit "
                          f"{settled.exit_price}, PnL {settled.realized_pnl} USDT", details)

    def _close_reason(self, row: PositionRow, since: int) -> str:
        fired = self._fired(row, set(), look=True)
        if fired is not None:
            return fired[0]
        return "liquidation" if self.ops.was_liquidated(row.symbol, since) else "reconciliation"

    def _fired(self, row: PositionRow, armed: set[str], *, look: bool
               ) -> tuple[str, bool] | None:
        """(bracket kind, its close is done) when one of the row's brackets went off.

        The book's word first (the user-data stream); with ``look``, a leg that is not
        armed is looked up on the exchange (its event may not have arrived yet).
        """
        for kind in ("stop_loss", "take_profit"):
            order = self.store.order_for(row.signal_id, kind)
            if order is None or order.client_order_id in armed:
                continue
            if order.status == "filled" or (
                    order.status == "triggered" and age_seconds(order.updated_at) < FIRED_GRACE_S):
                return kind, order.status == "filled"
            # a trigger whose close never showed up (the child refused, an event lost) is
            # asked about; so is a leg whose event may not have arrived yet
            if not look and order.status != "triggered":
                continue
            remote = self.ops.find_order(row.symbol, order.client_order_id, trigger=True,
                                         protective=True)
            if remote is not None and remote.status in FIRED_ON_EXCHANGE and \
                    (remote.status != "TRIGGERED" or order.status != "triggered"):
                done = remote.status != "TRIGGERED"
                self.store.update_order(order.client_order_id,
                                        status="filled" if done else "triggered")
                return kind, done
        return None

    # --- exchange open, database flat ---
    def _adopt(self, symbol: str, remote: Position) -> PositionRow:
        """Book an unknown position: ours if a recorded entry order filled it, else foreign."""
        signal_id = f"adopted-{symbol}-{int(time.time())}"
        for order in self.store.recent_entries(symbol):
            sent = self.ops.find_order(symbol, order.client_order_id, trigger=False)
            if sent is not None and sent.status == "FILLED":
                # our own entry, sent just before a crash: keep its signal and client ids
                self.store.update_order(order.client_order_id, status="filled",
                                        exchange_id=sent.order_id, avg_price=sent.avg_price)
                signal_id = order.signal_id
                break
        lev = self.engine.settings.leverage
        stop, take = bracket_prices(remote.side, remote.entry_price,
                                    Decimal(str(lev.stop_loss_percent)),
                                    Decimal(str(lev.take_profit_percent)),
                                    self.engine.gw.tick_size(symbol))
        leverage = remote.leverage or lev.leverage
        liq = remote.liquidation_price or remote.liquidation(self.ops.brackets(symbol),
                                                             leverage)
        return self.store.open_position(PositionRow(
            signal_id=signal_id, symbol=symbol, side=remote.side, quantity=remote.quantity,
            entry_price=remote.entry_price, leverage=leverage,
            margin=remote.isolated_wallet, stop_loss=stop, take_profit=take,
            liquidation_price=liq, status="open"))

    # --- both open ---
    def _ensure_brackets(self, row: PositionRow, qty: Decimal, armed: set[str]
                         ) -> list[Correction]:
        out: list[Correction] = []
        for kind, trigger in (("stop_loss", row.stop_loss), ("take_profit", row.take_profit)):
            cid = self._bracket_id(row, kind)
            if cid in armed or trigger is None or self._just_fired(cid):
                continue
            leg = Leg(kind, cid, trigger)
            result = self.ops.arm(row.symbol, row.side, qty, [leg], look_first=False)
            self.store.book(self.ops.booked(row.signal_id, row.symbol, row.side, qty, [leg],
                                            result))
            placed = result[kind]
            if isinstance(placed, ccxt.OrderImmediatelyFillable):
                # the price is already beyond the level: do what the order would have done
                self.ops.flatten(row.symbol, row.side, qty,
                                 bracket_ids(f"{row.signal_id}:{kind}")["emergency"],
                                 row.signal_id)
                closed = self._book_close(row, None, reason=kind)
                closed.kind, closed.level = "emergency_close", "critical"
                closed.text = f"{kind} of {row.symbol} could not be re-armed ({placed}); " \
                              f"closed at market. {closed.text}"
                return out + [closed]
            if isinstance(placed, ccxt.ExchangeError):
                # refused for another reason (-4045 too many stops, a used id, a filter):
                # a market close would be a guess; say so loudly and keep the position
                why = "client id taken by a finished order" if is_duplicate_id(placed) \
                    else str(placed)
                out.append(Correction("rearm_failed", row.symbol, row.signal_id, "critical",
                                      f"{kind} of {row.symbol} could not be re-armed: {why}; "
                                      f"position left open, act by hand",
                                      {"kind": kind, "trigger": str(trigger)}))
                continue
            if isinstance(placed, BaseException):
                raise placed
            out.append(Correction("rearmed", row.symbol, row.signal_id,
                                  "critical" if kind == "stop_loss" else "warning",
                                  f"{kind} of {row.symbol} was missing; re-armed at {trigger}",
                                  {"kind": kind, "trigger": str(trigger)}))
        return out

    def _just_fired(self, cid: str) -> bool:
        """The leg triggered moments ago: its close is in flight, re-arming would race it."""
        order = self.store.order(cid)
        return order is not None and order.status in FIRED and \
            age_seconds(order.updated_at) < FIRED_GRACE_S

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
