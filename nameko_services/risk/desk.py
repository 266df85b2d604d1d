"""Risk's desk: everything risk knows and does, minus the Nameko fan-out (events, queues, RPC).

Market and account come from the feed's state (:mod:`shared.state`), never from the
exchange: a check, a tick, the 5 s supervision and the status cost Redis round trips
only; the symbols' filters and leverage brackets are the rules the feed publishes
(:mod:`shared.symbol_rules`), so risk holds no exchange client at all. On stale state
new entries are refused with ``market_data_stale`` / ``account_state_stale``; closes
never pass through the desk, so they are not held up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import redis

from nameko_services.risk.engine import OpenPosition, RiskEngine, Snapshot
from nameko_services.risk.ledger import Ledger, LedgerView
from nameko_services.risk.reservations import Caps, ReservationBook
from nameko_services.risk.stores import STATES, StateStore, WarningLatch
from nameko_services.risk.watch import (
    PositionRisk,
    WatchedPosition,
    WatchEngine,
    liquidation_alert,
    missing_stop_alert,
    stop_alert,
)
from shared.db import make_sessionmaker
from shared.models import RiskAlert, TradeIntent
from shared.money import Bracket, Side, liquidation_price
from shared.nameko_deps import make_redis
from shared.records import Record
from shared.settings import Settings
from shared.state import Account, Order, Position, Price, StaleState, StateReader, now_ms
from shared.symbol_rules import SymbolRulesReader

log = logging.getLogger(__name__)

STOP_TYPES = frozenset({"STOP_MARKET", "STOP"})


class StaleRefusal(RuntimeError):
    """Market and/or account state too old to decide an entry on."""

    def __init__(self, stale: Sequence[StaleState]) -> None:
        super().__init__("; ".join(str(s) for s in stale))
        self.reasons = [s.reason for s in stale]


@dataclass
class Supervision:
    state: str
    ledger: LedgerView | None
    halt_reason: str = ""
    missing_stops: list[WatchedPosition] = field(default_factory=list)  # ask execute
    stop_alerts: list[RiskAlert] = field(default_factory=list)  # newly missing: alert once
    equity: Decimal = Decimal(0)
    exposure: Decimal = Decimal(0)
    open_positions: int = 0


@dataclass
class TickResult:
    risks: list[PositionRisk] = field(default_factory=list)
    alerts: list[RiskAlert] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)


def mark_of(p: Position, prices: Mapping[str, Price]) -> Decimal:
    """The position's mark price (last trade, else entry, when the feed has none)."""
    price = prices.get(p.symbol)
    return (price.mark or price.last or p.entry_price) if price is not None else p.entry_price


def stops_of(account: Account, symbol: str) -> list[Order]:
    """The open stop-loss orders of ``symbol`` (conditional orders live on the algo API)."""
    return [o for o in account.open_orders(symbol) if o.type in STOP_TYPES]


class RiskDesk:
    """Everything risk knows and does, minus the Nameko fan-out (events, queues, RPC)."""

    def __init__(self, settings: Settings, rules: SymbolRulesReader, state: StateStore,
                 reservations: ReservationBook, ledger: Ledger, latch: WarningLatch,
                 feed: StateReader) -> None:
        self.settings = settings
        self.rules = rules
        self.state = state
        self.reservations = reservations
        self.ledger = ledger
        self.latch = latch
        self.feed = feed
        self.engine = RiskEngine(settings)
        self.watch = WatchEngine(settings.risk)
        self._first_seen: dict[str, float] = {}
        self._stop_checked: dict[str, float] = {}

    # --- views of the feed's state ---
    def open_positions(self, account: Account, prices: Mapping[str, Price]
                       ) -> list[OpenPosition]:
        lev = self.settings.leverage.leverage
        out = []
        for p in account.positions:
            notional = p.quantity * mark_of(p, prices)
            margin = p.isolated_wallet if p.isolated_wallet > 0 else notional / (p.leverage or lev)
            out.append(OpenPosition(symbol=p.symbol, side=p.side, margin=margin,
                                    notional=notional))
        return out

    def watched(self, p: Position, stops: Sequence[Order],
                brackets: Sequence[Bracket]) -> WatchedPosition:
        """The position as the watch sees it; the exchange's liquidation price while the
        feed has it from a snapshot, else Binance's formula on the isolated wallet."""
        liq = p.liquidation_price
        if liq is None and p.quantity > 0 and p.entry_price > 0:
            liq = p.liquidation(brackets, p.leverage or self.settings.leverage.leverage)
        triggers = [o.trigger_price for o in stops if o.trigger_price is not None]
        return WatchedPosition(
            symbol=p.symbol, side=p.side, quantity=p.quantity, entry_price=p.entry_price,
            liquidation_price=liq or Decimal(0), isolated_wallet=p.isolated_wallet,
            stop_loss=triggers[0] if triggers else None, stop_armed=bool(stops))

    def fresh(self, symbol: str) -> tuple[Account, Price]:
        """The account and the symbol's price, both fresh, or :class:`StaleRefusal`."""
        stale: list[StaleState] = []
        price: Price | None = None
        account: Account | None = None
        try:
            price = self.feed.price(symbol)
            price.reference  # noqa: B018 - a fresh price row without last or mark is stale too
        except StaleState as exc:
            stale.append(exc)
            price = None
        try:
            account = self.feed.account()
        except StaleState as exc:
            stale.append(exc)
        if stale or price is None or account is None:
            raise StaleRefusal(stale)
        return account, price

    # --- the pre-trade check ---
    def snapshot(self, intent: TradeIntent) -> tuple[Snapshot, int]:
        state, _ = self.state.get()
        account, price = self.fresh(intent.symbol)
        try:
            rules = self.rules.get(intent.symbol)
        except StaleState as exc:
            raise StaleRefusal([exc]) from exc
        prices = {**self.feed.prices(), intent.symbol: price}
        equity = account.equity_at(prices)
        positions = self.open_positions(account, prices)
        # a reservation filled before the account's heartbeat is counted by the positions
        # once they show its symbol; until then (the fill's event can come after the
        # heartbeat, e.g. while the exchange fails requests) the reservation still counts
        as_of = account.as_of_ms
        reserved = self.reservations.totals(intent.signal_id, as_of,
                                            frozenset(p.symbol for p in positions))
        view = self.ledger.view()
        drawdown = Decimal(0)
        if view is not None and view.peak_equity > 0:
            drawdown = max(Decimal(0), view.peak_equity - equity) / view.peak_equity
        snap = Snapshot(
            state=state, equity=equity, available=account.available(), positions=positions,
            last_price=price.reference, price_age_ms=max(0, now_ms() - price.updated_ms),
            min_quantity=rules.min_quantity, min_notional=rules.min_notional,
            brackets=self.rules.brackets(intent.symbol),
            reserved_margin=reserved.margin, reserved_notional=reserved.notional,
            reserved_count=reserved.count, reserved_symbols=reserved.symbols,
            daily_loss_ratio=view.daily_loss_ratio if view else Decimal(0),
            drawdown=drawdown)
        return snap, as_of

    def check(self, intent: TradeIntent) -> dict[str, Any]:
        """Three stages on a snapshot, then the atomic reservation; a RiskDecision dict."""
        try:
            snap, as_of = self.snapshot(intent)
        except StaleRefusal as exc:
            return _denied(intent, exc.reasons, str(exc))
        except StaleState as exc:  # e.g. a fresh price without a value, just after a feed restart
            return _denied(intent, [exc.reason], str(exc))
        decision = self.engine.check(intent, snap)
        if not decision.approved:
            return decision.wire()
        t, r = self.settings.trading, self.settings.risk
        margin = intent.quantity * intent.reference_price / intent.leverage
        held = self.reservations.reserve(
            intent.signal_id, intent.symbol, margin, intent.quantity * intent.reference_price,
            Caps(open_count=len(snap.positions), open_exposure=snap.exposure,
                 available=snap.available, max_positions=t.max_open_positions,
                 max_exposure=snap.equity * Decimal(str(r.max_total_exposure)),
                 one_per_symbol=not t.allow_same_symbol_position,
                 open_symbols=frozenset(p.symbol for p in snap.positions),
                 rate_limit=r.max_orders_per_minute, positions_as_of_ms=as_of))
        wire = decision.wire()
        wire["checks"].update(reserved=held.approved,
                              reserved_positions=held.others.count,
                              reserved_margin=str(held.others.margin),
                              reserved_notional=str(held.others.notional))
        if not held.approved:
            wire["approved"] = False
            wire["reasons"] = list(held.reasons)
        return wire

    # --- what execute's events mean for the reservations ---
    def release(self, signal_id: str) -> bool:
        """The intent failed or its position closed: its reservation is free again."""
        return self.reservations.release(signal_id)

    def mark_filled(self, signal_id: str) -> bool:
        """The intent filled: its reservation stays until the account shows the position."""
        return self.reservations.mark_filled(signal_id)

    # --- liquidation price on request ---
    def liquidation_price(self, symbol: str, side: Side, entry_price: Decimal,
                          quantity: Decimal, leverage: int,
                          wallet_balance: Decimal | None = None) -> Decimal:
        """Binance's isolated one-way formula with the symbol's leverage brackets."""
        return liquidation_price(side, entry_price, quantity, leverage,
                                 self.rules.brackets(symbol), wallet_balance)

    # --- state ---
    def trading_state(self) -> str:
        """ACTIVE, REDUCING or HALTED, as last stored."""
        return self.state.get()[0]

    def set_state(self, state: str, reason: str) -> tuple[str, str]:
        """(previous, new). A manual resume accepts the current equity as the baseline."""
        state = state.upper()
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}")
        previous, _ = self.state.set(state, reason)  # type: ignore[arg-type]
        if state == "ACTIVE" and previous != "ACTIVE":
            try:
                account = self.feed.account()
                self.ledger.rebase(account.balance.wallet, account.equity_at(self.feed.prices()))
            except StaleState as exc:
                log.error("resume: could not rebase the daily ledger: %s", exc)
        return previous, state

    # --- supervision (timer) ---
    def supervise(self) -> Supervision:
        """Raises :class:`StaleState` (after mirroring the state) while the account is."""
        state = self.state.mirror()
        out = Supervision(state=state, ledger=None)
        account = self.feed.account()
        prices = self.feed.prices()
        equity = account.equity_at(prices)
        view = self.ledger.observe(account.balance.wallet, equity)
        out.ledger, out.equity = view, equity
        r = self.settings.risk
        if state != "HALTED":
            if view.daily_loss_ratio >= Decimal(str(r.max_daily_loss)):
                out.halt_reason = (f"daily_loss_limit: realised {view.daily_pnl:.2f} USDT "
                                   f"today ({view.daily_loss_ratio:.2%} >= "
                                   f"{r.max_daily_loss:.2%})")
            elif view.drawdown >= Decimal(str(r.max_drawdown)):
                out.halt_reason = (f"max_drawdown: equity {equity:.2f} is {view.drawdown:.2%} "
                                   f"below its peak {view.peak_equity:.2f}")
        out.open_positions = len(account.positions)
        out.exposure = sum((p.notional for p in self.open_positions(account, prices)),
                           Decimal(0))
        out.missing_stops = self._missing_stops(account)
        out.stop_alerts = [missing_stop_alert(p) for p in out.missing_stops
                           if self.latch.escalated(p.symbol, "stop_missing", "critical")]
        self.latch.forget_except({p.symbol for p in account.positions})
        return out

    def _missing_stops(self, account: Account) -> list[WatchedPosition]:
        r = self.settings.risk
        now = time.monotonic()
        open_keys = {f"{p.symbol}:{p.side}" for p in account.positions}
        for gone in set(self._first_seen) - open_keys:
            self._first_seen.pop(gone, None)
        missing = []
        for p in account.positions:
            # execute arms the stop right after the fill: give it the grace period
            first = self._first_seen.setdefault(f"{p.symbol}:{p.side}", now)
            if now - first < r.stop_grace_s:
                continue
            # at most one re-arm request per interval while a stop stays missing
            if now - self._stop_checked.get(p.symbol, 0.0) < r.stop_check_interval_s:
                continue
            self._stop_checked[p.symbol] = now
            stops = stops_of(account, p.symbol)
            if stops:
                self.latch.escalated(p.symbol, "stop_missing", "")
                continue
            missing.append(self.watched(p, stops, self.rules.brackets(p.symbol)))
        return missing

    # --- live watch (ticks) ---
    def on_tick(self, symbol: str, mark: Decimal) -> TickResult:
        out = TickResult()
        # the last known account, even if stale: a warning on a position that may have
        # just closed beats no warning on one that is about to be liquidated
        account = self.feed.account(fresh=False)
        position = account.position(symbol)
        if position is None:
            return out
        r = self.settings.risk
        brackets = self.rules.brackets(symbol)
        risk = self.watch.evaluate(self.watched(position, stops_of(account, symbol), brackets),
                                   mark, brackets)
        out.risks.append(risk)
        if self.latch.escalated(symbol, "liquidation", risk.liquidation_level):
            out.alerts.append(liquidation_alert(risk))
        if self.latch.escalated(symbol, "stop", risk.stop_level):
            out.alerts.append(stop_alert(risk))
        if self.latch.due(f"{symbol}:{risk.side}", r.metrics_interval_s):
            out.records.append(Record("position_risk", risk.wire()))
        return out

    # --- status ---
    def status(self) -> dict[str, Any]:
        state, reason = self.state.get()
        account = self.feed.account(fresh=False)
        prices = self.feed.prices()
        account_age = now_ms() - account.as_of_ms if account.as_of_ms else None
        equity = account.equity_at(prices)
        opened = self.open_positions(account, prices)
        margin = sum((p.margin for p in opened), Decimal(0))
        exposure = sum((p.notional for p in opened), Decimal(0))
        view = self.ledger.view()
        reserved = self.reservations.totals()
        positions = []
        for p, o in zip(account.positions, opened, strict=True):
            stops = stops_of(account, p.symbol)
            brackets = self.rules.brackets(p.symbol)
            risk = self.watch.evaluate(self.watched(p, stops, brackets), mark_of(p, prices),
                                       brackets)
            positions.append({**risk.wire(), "quantity": str(p.quantity),
                              "margin": str(o.margin), "notional": str(o.notional),
                              "stop_loss_armed": bool(stops)})
        return {
            "state": state, "reason": reason, "equity": str(equity),
            "available": str(account.available()), "margin_used": str(margin),
            "margin_usage": str((margin / equity).quantize(Decimal("0.0001"))) if equity else "0",
            "exposure": str(exposure),
            "exposure_ratio": str((exposure / equity).quantize(Decimal("0.0001")))
            if equity else "0",
            "account_fresh": account_age is not None and account_age <= self.feed.max_age_ms,
            "account_age_ms": account_age,
            "reserved": {"count": reserved.count, "margin": str(reserved.margin),
                         "notional": str(reserved.notional)},
            "daily": view.wire() if view else None,
            "daily_pnl": str(view.daily_pnl) if view else "0",
            "daily_loss_limit": str(view.start_wallet * Decimal(str(
                self.settings.risk.max_daily_loss))) if view else None,
            "drawdown": str(view.drawdown.quantize(Decimal("0.000001"))) if view else "0",
            "open_positions": positions,
        }


def _denied(intent: TradeIntent, reasons: list[str], detail: str) -> dict[str, Any]:
    return {"type": "risk_decision", "signal_id": intent.signal_id, "approved": False,
            "reasons": reasons, "checks": {"error": detail}, "liquidation_price": None}


def build_desk(settings: Settings, client: redis.Redis | None = None) -> RiskDesk:
    client = client or make_redis(settings)
    sessions = make_sessionmaker(settings)
    return RiskDesk(settings, SymbolRulesReader(client),
                    StateStore(sessions, client),
                    ReservationBook(client, settings.risk.reservation_ttl_s),
                    Ledger(sessions), WarningLatch(client), StateReader(client, settings))
