"""Risk's dependencies: the :class:`RiskDesk` facade over the exchange, SQL and Redis.

* :class:`StateStore`: the trading state in SQL (survives every restart), mirrored to the
  Redis key ``phoenix95:trading_state`` on every change and at start, so brain can refuse
  a webhook without an RPC round trip;
* :class:`ReservationBook`: atomic margin/exposure reservations shared by all instances;
* :class:`Ledger`: daily realised PnL and the equity peak;
* :class:`WarningLatch`: one alert per escalation, whichever instance saw the tick.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import ccxt
import redis
from nameko.extensions import DependencyProvider
from sqlalchemy.orm import sessionmaker

from nameko_services.risk.engine import OpenPosition, RiskEngine, Snapshot
from nameko_services.risk.ledger import Ledger, LedgerView
from nameko_services.risk.reservations import Caps, ReservationBook
from nameko_services.risk.watch import (
    RANK,
    PositionRisk,
    WatchedPosition,
    WatchEngine,
    liquidation_alert,
    stop_alert,
)
from shared.db import RiskStateRow, make_sessionmaker, utcnow
from shared.market import ExchangeGateway, ExchangeUnavailable, to_decimal
from shared.models import RiskAlert, TradeIntent, TradingState
from shared.nameko_deps import make_redis
from shared.names import RISK_THROTTLE_PREFIX, RISK_WARNINGS_KEY, TRADING_STATE_KEY
from shared.records import Record
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

STATES: tuple[TradingState, ...] = ("ACTIVE", "REDUCING", "HALTED")


class StateStore:
    """The trading state in SQL, so a restart of any service keeps a halt in force."""

    def __init__(self, sessions: sessionmaker, client: redis.Redis | None = None,
                 key: str = TRADING_STATE_KEY) -> None:
        self._sessions = sessions
        self._redis = client
        self.key = key

    def get(self) -> tuple[TradingState, str]:
        with self._sessions() as s:
            row = s.get(RiskStateRow, 1)
            if row is None:
                return "ACTIVE", ""
            return row.state, row.reason

    def set(self, state: TradingState, reason: str) -> tuple[TradingState, str]:
        """Store durably, then mirror; returns (previous state, reason)."""
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}")
        with self._sessions.begin() as s:
            row = s.get(RiskStateRow, 1)
            previous: TradingState = row.state if row else "ACTIVE"
            if row is None:
                s.add(RiskStateRow(id=1, state=state, reason=reason, updated_at=utcnow()))
            else:
                row.state, row.reason, row.updated_at = state, reason, utcnow()
        self.mirror(state)
        return previous, reason

    def mirror(self, state: str | None = None) -> str:
        """Write the durable state to Redis (brain's fast path); SQL stays the truth."""
        state = state or self.get()[0]
        if self._redis is not None:
            try:
                self._redis.set(self.key, state)
            except redis.RedisError as exc:
                log.error("could not mirror trading state %s to redis: %s", state, exc)
        return state


class WarningLatch:
    """Alert once per escalation of a (symbol, kind), shared by every risk instance."""

    _SCRIPT = """
    local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
    local new = tonumber(ARGV[2])
    if new == 0 then redis.call('HDEL', KEYS[1], ARGV[1]) return 0 end
    if new ~= cur then redis.call('HSET', KEYS[1], ARGV[1], new) end
    if new > cur then return 1 end
    return 0
    """

    def __init__(self, client: redis.Redis, key: str = RISK_WARNINGS_KEY,
                 throttle_prefix: str = RISK_THROTTLE_PREFIX) -> None:
        self.client = client
        self.key = key
        self.throttle_prefix = throttle_prefix
        self._latch = client.register_script(self._SCRIPT)

    def escalated(self, symbol: str, kind: str, level: str) -> bool:
        """Record ``level`` (``""`` clears); True when it is higher than the last one."""
        return bool(self._latch(keys=[self.key], args=[f"{symbol}:{kind}", RANK[level]]))

    def forget_except(self, symbols: set[str]) -> None:
        fields = [str(f) for f in self.client.hkeys(self.key)]
        stale = [f for f in fields if f.split(":", 1)[0] not in symbols]
        if stale:
            self.client.hdel(self.key, *stale)

    def due(self, name: str, interval_s: float) -> bool:
        """True at most once per ``interval_s`` per name, across instances."""
        return bool(self.client.set(self.throttle_prefix + name, "1", nx=True,
                                    px=max(1, int(interval_s * 1000))))


@dataclass
class Supervision:
    state: str
    ledger: LedgerView | None
    halt_reason: str = ""
    missing_stops: list[WatchedPosition] = field(default_factory=list)
    equity: Decimal = Decimal(0)
    exposure: Decimal = Decimal(0)
    open_positions: int = 0


@dataclass
class TickResult:
    risks: list[PositionRisk] = field(default_factory=list)
    alerts: list[RiskAlert] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)


def _symbol_of(p: dict[str, Any]) -> str:
    return str(p.get("info", {}).get("symbol") or p["symbol"])


def _side_of(p: dict[str, Any]) -> str:
    return "LONG" if str(p.get("side", "")).lower() == "long" else "SHORT"


def _is_stop(order: dict[str, Any]) -> bool:
    info = order.get("info", {})
    kind = str(info.get("orderType") or info.get("type") or order.get("type") or "").upper()
    return kind in ("STOP_MARKET", "STOP")


class RiskDesk:
    """Everything risk knows and does, minus the Nameko fan-out (events, queues, RPC)."""

    def __init__(self, settings: Settings, gateway: ExchangeGateway, state: StateStore,
                 reservations: ReservationBook, ledger: Ledger, latch: WarningLatch) -> None:
        self.settings = settings
        self.gateway = gateway
        self.state = state
        self.reservations = reservations
        self.ledger = ledger
        self.latch = latch
        self.engine = RiskEngine(settings)
        self.watch = WatchEngine(settings.risk)
        self._positions: tuple[int, list[dict[str, Any]]] = (0, [])
        self._stops: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._first_seen: dict[str, float] = {}
        self._stop_checked: dict[str, float] = {}

    # --- exchange views ---
    def positions(self, max_age_s: float | None = None) -> tuple[int, list[dict[str, Any]]]:
        """(fetched at, epoch ms; open positions) from the exchange, on a short cache."""
        age = self.settings.risk.position_cache_s if max_age_s is None else max_age_s
        fetched, rows = self._positions
        now = int(time.time() * 1000)
        if now - fetched > age * 1000:
            rows = self.gateway.positions()
            self._positions = (now, rows)
            fetched = now
        return fetched, rows

    def open_positions(self, max_age_s: float | None = None) -> list[OpenPosition]:
        return _open_positions(self.positions(max_age_s)[1])

    def stop_orders(self, symbol: str, max_age_s: float) -> list[dict[str, Any]]:
        hit = self._stops.get(symbol)
        if hit is None or time.monotonic() - hit[0] > max_age_s:
            rows = self.gateway.call(self.gateway.client.fetch_open_orders, symbol, None, None,
                                     {"trigger": True})
            hit = (time.monotonic(), [o for o in rows if _is_stop(o)])
            self._stops[symbol] = hit
        return hit[1]

    def watched(self, p: dict[str, Any], stops: list[dict[str, Any]]) -> WatchedPosition:
        triggers = [to_decimal(o.get("triggerPrice") or o.get("stopPrice")) for o in stops]
        return WatchedPosition(
            symbol=_symbol_of(p), side=_side_of(p), quantity=abs(to_decimal(p.get("contracts"))),
            entry_price=to_decimal(p.get("entryPrice")),
            liquidation_price=to_decimal(p.get("liquidationPrice")),
            isolated_wallet=to_decimal(p.get("info", {}).get("isolatedWallet")
                                       or p.get("collateral") or p.get("initialMargin")),
            stop_loss=triggers[0] if triggers else None, stop_armed=bool(triggers))

    def account(self) -> tuple[Decimal, Decimal, Decimal]:
        """(wallet balance, margin balance = equity, available) in USDT."""
        bal = self.gateway.call(self.gateway.client.fetch_balance)
        usdt = bal.get("USDT", {})
        info = bal.get("info", {})
        wallet = info.get("totalWalletBalance")
        if wallet is None:
            wallet = next((a.get("walletBalance") for a in info.get("assets", [])
                           if a.get("asset") == "USDT"), usdt.get("total"))
        return to_decimal(wallet), to_decimal(usdt.get("total")), to_decimal(usdt.get("free"))

    # --- the pre-trade check ---
    def snapshot(self, intent: TradeIntent) -> tuple[Snapshot, int]:
        state, _ = self.state.get()
        # a gate decides on fresh numbers: a just-closed position or a just-booked loss must
        # count now (concurrent checks are kept apart by the reservations, not by a cache)
        equity, available = self.gateway.equity(ttl=0.0)
        as_of, rows = self.positions(max_age_s=0.0)
        positions = _open_positions(rows)
        price, ts = self.gateway.last_price(intent.symbol)
        age = max(0, int(time.time() * 1000) - ts) if ts else 0
        reserved = self.reservations.totals(intent.signal_id, as_of)
        view = self.ledger.view()
        drawdown = Decimal(0)
        if view is not None and view.peak_equity > 0:
            drawdown = max(Decimal(0), view.peak_equity - equity) / view.peak_equity
        snap = Snapshot(
            state=state, equity=equity, available=available, positions=positions,
            last_price=price, price_age_ms=age,
            min_quantity=self.gateway.min_quantity(intent.symbol),
            min_notional=self.gateway.min_notional(intent.symbol),
            brackets=self.gateway.brackets(intent.symbol),
            reserved_margin=reserved.margin, reserved_notional=reserved.notional,
            reserved_count=reserved.count, reserved_symbols=reserved.symbols,
            daily_loss_ratio=view.daily_loss_ratio if view else Decimal(0),
            drawdown=drawdown)
        return snap, as_of

    def check(self, intent: TradeIntent) -> dict[str, Any]:
        """Three stages on a snapshot, then the atomic reservation; a RiskDecision dict."""
        try:
            snap, as_of = self.snapshot(intent)
        except ExchangeUnavailable as exc:
            return {"type": "risk_decision", "signal_id": intent.signal_id, "approved": False,
                    "reasons": ["exchange_unavailable"], "checks": {"error": str(exc)},
                    "liquidation_price": None}
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

    # --- state ---
    def set_state(self, state: str, reason: str) -> tuple[str, str]:
        """(previous, new). A manual resume accepts the current equity as the baseline."""
        state = state.upper()
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}")
        previous, _ = self.state.set(state, reason)  # type: ignore[arg-type]
        if state == "ACTIVE" and previous != "ACTIVE":
            try:
                wallet, equity, _ = self.account()
                self.ledger.rebase(wallet, equity)
            except ExchangeUnavailable as exc:
                log.error("resume: could not rebase the daily ledger: %s", exc)
        return previous, state

    # --- supervision (timer) ---
    def supervise(self) -> Supervision:
        state = self.state.mirror()
        out = Supervision(state=state, ledger=None)
        wallet, equity, _available = self.account()
        view = self.ledger.observe(wallet, equity)
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
        _, rows = self.positions()
        out.open_positions = len(rows)
        out.exposure = sum((abs(to_decimal(p.get("notional"))) for p in rows), Decimal(0))
        out.missing_stops = self._missing_stops(rows)
        self.latch.forget_except({_symbol_of(p) for p in rows})
        return out

    def _missing_stops(self, rows: list[dict[str, Any]]) -> list[WatchedPosition]:
        r = self.settings.risk
        now = time.monotonic()
        open_keys = {f"{_symbol_of(p)}:{_side_of(p)}" for p in rows}
        for gone in set(self._first_seen) - open_keys:
            self._first_seen.pop(gone, None)
        missing = []
        for p in rows:
            symbol = _symbol_of(p)
            first = self._first_seen.setdefault(f"{symbol}:{_side_of(p)}", now)
            if now - first < r.stop_grace_s:
                continue
            if now - self._stop_checked.get(symbol, 0.0) < r.stop_check_interval_s:
                continue
            self._stop_checked[symbol] = now
            try:
                stops = self.stop_orders(symbol, 0.0)
            except (ExchangeUnavailable, ccxt.ExchangeError) as exc:
                log.warning("%s: could not read stop orders: %s", symbol, exc)
                continue
            pos = self.watched(p, stops)
            if not pos.stop_armed:
                missing.append(pos)
            else:
                self.latch.escalated(symbol, "stop_missing", "")
        return missing

    # --- live watch (ticks) ---
    def on_tick(self, symbol: str, mark: Decimal) -> TickResult:
        out = TickResult()
        rows = [p for p in self.positions()[1] if _symbol_of(p) == symbol]
        if not rows:
            return out
        r = self.settings.risk
        brackets = self.gateway.brackets(symbol)
        stops = self.stop_orders(symbol, r.stop_check_interval_s)
        for p in rows:
            risk = self.watch.evaluate(self.watched(p, stops), mark, brackets)
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
        equity, available = self.gateway.equity(ttl=0.0)
        rows = self.positions(max_age_s=0.0)[1]
        margin = sum((to_decimal(p.get("initialMargin") or p.get("collateral")) for p in rows),
                     Decimal(0))
        exposure = sum((abs(to_decimal(p.get("notional"))) for p in rows), Decimal(0))
        view = self.ledger.view()
        reserved = self.reservations.totals()
        positions = []
        for p in rows:
            symbol = _symbol_of(p)
            mark = to_decimal(p.get("markPrice"))
            try:
                stops = self.stop_orders(symbol, self.settings.risk.stop_check_interval_s)
            except (ExchangeUnavailable, ccxt.ExchangeError):
                stops = []
            risk = self.watch.evaluate(self.watched(p, stops), mark,
                                       self.gateway.brackets(symbol))
            positions.append({**risk.wire(), "quantity": str(abs(to_decimal(p["contracts"]))),
                              "margin": str(to_decimal(p.get("initialMargin"))),
                              "notional": str(abs(to_decimal(p.get("notional")))),
                              "stop_loss_armed": bool(stops)})
        return {
            "state": state, "reason": reason, "equity": str(equity),
            "available": str(available), "margin_used": str(margin),
            "margin_usage": str((margin / equity).quantize(Decimal("0.0001"))) if equity else "0",
            "exposure": str(exposure),
            "exposure_ratio": str((exposure / equity).quantize(Decimal("0.0001")))
            if equity else "0",
            "reserved": {"count": reserved.count, "margin": str(reserved.margin),
                         "notional": str(reserved.notional)},
            "daily": view.wire() if view else None,
            "daily_pnl": str(view.daily_pnl) if view else "0",
            "daily_loss_limit": str(view.start_wallet * Decimal(str(
                self.settings.risk.max_daily_loss))) if view else None,
            "drawdown": str(view.drawdown.quantize(Decimal("0.000001"))) if view else "0",
            "open_positions": positions,
        }


def build_desk(settings: Settings, gateway: ExchangeGateway | None = None,
               client: redis.Redis | None = None) -> RiskDesk:
    client = client or make_redis(settings)
    sessions = make_sessionmaker(settings)
    return RiskDesk(settings, gateway or ExchangeGateway(settings, name="risk"),
                    StateStore(sessions, client),
                    ReservationBook(client, settings.risk.reservation_ttl_s),
                    Ledger(sessions), WarningLatch(client))


class Desk(DependencyProvider):
    """The process's :class:`RiskDesk`; mirrors the durable trading state at start."""

    def setup(self) -> None:
        self.desk = build_desk(get_settings())

    def start(self) -> None:
        state = self.desk.state.mirror()
        log.info("trading state at start: %s (mirrored to %s)", state, self.desk.state.key)

    def get_dependency(self, worker_ctx: Any) -> RiskDesk:
        return self.desk


def _open_positions(rows: list[dict[str, Any]]) -> list[OpenPosition]:
    return [OpenPosition(symbol=_symbol_of(p), side=_side_of(p),
                         margin=to_decimal(p.get("initialMargin") or p.get("collateral")),
                         notional=abs(to_decimal(p.get("notional"))))
            for p in rows]
