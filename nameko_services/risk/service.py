"""Risk - Position & Risk Manager (HTTP 8101): the gate nothing trades without.

Entrypoints only; the logic is in :class:`~nameko_services.risk.desk.RiskDesk`, which reads
market and account from the feed's state (no exchange request on a check, a tick or the
timer).

* ``check``: three-stage pre-trade check plus an atomic reservation in Redis;
* ``set_state(state, reason)``: ACTIVE / REDUCING / HALTED, durable; execute's pre-flight
  failure path calls ``set_state("REDUCING", reason)``; HALTED is set automatically when
  the daily loss or drawdown limit is breached;
* ``execute.trade_failed`` / ``position_closed`` release a reservation, ``trade_opened``
  marks it filled (dropped once the exchange shows the position);
* ``market:stream`` (group ``risk_processors``) drives the live liquidation watch;
* a 5 s timer mirrors the state, books the daily ledger and checks every stop-loss (it
  skips the ledger and the stops while the account state is stale).
"""

from __future__ import annotations

import logging
import time
import uuid
from decimal import Decimal
from typing import Any

import eventlet
from nameko.events import event_handler
from nameko.rpc import RpcProxy, rpc
from nameko.timer import timer
from nameko.web.handlers import http
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError
from werkzeug.wrappers import Request, Response

from nameko_services.risk.dependencies import Desk
from nameko_services.risk.desk import RiskDesk, TickResult
from nameko_services.risk.engine import breaches
from nameko_services.risk.stores import STATES
from nameko_services.risk.watch import missing_stop_alert
from shared.health import ReadinessChecks, ReadinessProbe
from shared.models import RiskAlert, TradeIntent
from shared.money import liquidation_price as liq_price
from shared.nameko_deps import Bus, BusError, Config, MessageBus, Telemetry
from shared.names import (
    EVT_POSITION_CLOSED,
    EVT_TRADE_FAILED,
    EVT_TRADE_OPENED,
    EXECUTE,
    MARKET_STREAM,
    REC_TICK,
    RISK,
    RISK_ALERT_KEY,
    RISK_ALERT_QUEUE,
    RISK_EXCHANGE,
    RISK_GROUP,
    RISK_STREAM,
    kombu_queue,
)
from shared.openapi import openapi_response
from shared.records import Record
from shared.settings import Settings, settings_or_exit
from shared.state import StaleState
from shared.streams import stream_consume
from shared.telemetry import TelemetryWriter
from shared.web import HttpError, api, metrics_response, read_json_object, require_api_key

settings_or_exit()
log = logging.getLogger(__name__)

CHECKS = Counter("phoenix95_risk_checks_total", "Pre-trade checks by result", ["result"])
DENIALS = Counter("phoenix95_risk_denials_total", "Pre-trade denials by reason", ["reason"])
CHECK_SECONDS = Histogram("phoenix95_risk_check_seconds", "Pre-trade check latency")
TICK_LATENCY = Histogram(
    "phoenix95_market_tick_latency_seconds",
    "Exchange event time of a tick -> risk's live watch receives it (feed + market:stream)",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
STATE = Gauge("phoenix95_trading_state", "1 for the current trading state", ["state"])
HALTED = Gauge("phoenix95_trading_halted", "1 while trading is HALTED")
LIQ_DISTANCE = Gauge("phoenix95_liquidation_distance_ratio",
                     "|mark - liquidation price| / mark of the open position", ["symbol"])
EQUITY = Gauge("phoenix95_equity", "Margin balance (wallet + unrealised PnL), USDT")
EXPOSURE = Gauge("phoenix95_exposure", "Total notional of open positions, USDT")
OPEN_POSITIONS = Gauge("phoenix95_open_positions", "Open positions on the exchange")
DAILY_PNL = Gauge("phoenix95_daily_realized_pnl", "Realised PnL of the UTC day, USDT")
DRAWDOWN = Gauge("phoenix95_drawdown_ratio", "Equity below its peak / the peak")
ALERTS = Counter("phoenix95_risk_alerts_total", "Risk alerts published", ["code"])
REARM_TIMEOUT_S = 15.0


def _export_state(state: str) -> None:
    for name in STATES:
        STATE.labels(name).set(1 if name == state else 0)
    HALTED.set(1 if state == "HALTED" else 0)


class RiskService:
    name = RISK

    config: Settings = Config()
    desk: RiskDesk = Desk()
    bus: MessageBus = Bus()
    telemetry: TelemetryWriter = Telemetry()
    execute = RpcProxy(EXECUTE)

    # --- RPC ---
    @rpc
    def check(self, intent: dict[str, Any]) -> dict[str, Any]:
        """Three-stage pre-trade check of a trade intent; see RiskDecision.

        An approved intent holds a reservation (margin, exposure, a position slot) in
        Redis until execute reports it failed or closed, or the TTL ends.
        """
        started = time.perf_counter()
        parsed = TradeIntent.model_validate(intent)
        decision = self.desk.check(parsed)
        CHECK_SECONDS.observe(time.perf_counter() - started)
        CHECKS.labels("approved" if decision["approved"] else "denied").inc()
        for reason in decision["reasons"]:
            DENIALS.labels(reason).inc()
        self.telemetry.emit(RISK_STREAM, Record("risk_check", {
            "symbol": parsed.symbol, "side": parsed.side, "approved": decision["approved"],
            "reasons": decision["reasons"], "liquidation_price": decision["liquidation_price"],
            "checks": decision["checks"]}, parsed.signal_id))
        breached = breaches(decision["reasons"])
        if breached and decision["checks"].get("equity"):
            self._change_state("HALTED", f"{breached[0]} (seen by check {parsed.signal_id})")
        return decision

    @rpc
    def status(self) -> dict[str, Any]:
        """State, equity, exposure, margin usage, daily PnL vs limit, drawdown, each open
        position with its liquidation distance, and the limits in force."""
        status = self.desk.status()
        s = self.config
        status["limits"] = {
            "leverage": s.leverage.leverage, "margin_mode": s.leverage.margin_mode,
            "max_position_size": s.trading.max_position_size,
            "max_open_positions": s.trading.max_open_positions,
            "allow_same_symbol_position": s.trading.allow_same_symbol_position,
            "stop_loss_percent": s.leverage.stop_loss_percent,
            "take_profit_percent": s.leverage.take_profit_percent,
            "liquidation_buffer": s.leverage.liquidation_buffer,
            **s.risk.model_dump(),
        }
        _export_state(status["state"])
        return status

    @rpc
    def set_state(self, state: str, reason: str = "") -> dict[str, Any]:
        """ACTIVE / REDUCING (closes only) / HALTED (nothing new); durable, mirrored to
        Redis ``phoenix95:trading_state``. Each change: event, alert, risk_events record.
        Execute's pre-flight failure path calls ``set_state("REDUCING", reason)``."""
        return self._change_state(state, reason)

    @rpc
    def liquidation_price(self, symbol: str, side: str, entry_price: Any, quantity: Any,
                          leverage: int, wallet_balance: Any = None) -> str:
        """Binance's isolated one-way liquidation price for these inputs."""
        side = side.upper()
        if side not in ("LONG", "SHORT"):
            raise ValueError("side must be LONG or SHORT")
        brackets = self.desk.rules.brackets(symbol.upper())
        price = liq_price(side, Decimal(str(entry_price)), Decimal(str(quantity)),  # type: ignore[arg-type]
                          int(leverage), brackets,
                          Decimal(str(wallet_balance)) if wallet_balance is not None else None)
        return str(price.quantize(Decimal("0.00000001")))

    # --- events from execute: reservations follow the trade ---
    @event_handler(EXECUTE, EVT_TRADE_FAILED)
    def on_trade_failed(self, event: dict[str, Any]) -> None:
        self.desk.reservations.release(str(event.get("signal_id", "")))

    @event_handler(EXECUTE, EVT_TRADE_OPENED)
    def on_trade_opened(self, event: dict[str, Any]) -> None:
        self.desk.reservations.mark_filled(str(event.get("signal_id", "")))

    @event_handler(EXECUTE, EVT_POSITION_CLOSED)
    def on_position_closed(self, event: dict[str, Any]) -> None:
        self.desk.reservations.release(str(event.get("signal_id", "")))

    # --- live watch ---
    @stream_consume(MARKET_STREAM, RISK_GROUP, count=50)
    def on_market(self, fields: dict[str, str]) -> None:
        """Each tick: every open position of the symbol against liquidation and stop."""
        record = Record.from_stream_fields(fields)
        if record.type != REC_TICK:
            return
        if record.ts and time.time() * 1000 - record.ts > self.config.risk.max_price_age_ms:
            return  # a tick left pending across a restart: the market has moved on
        event_ms = int(record.data.get("event_ms") or 0)
        if event_ms:
            TICK_LATENCY.observe(max(0.0, time.time() - event_ms / 1000))
        symbol = str(record.data.get("symbol", ""))
        mark = Decimal(str(record.data.get("mark_price") or record.data.get("price") or 0))
        if not symbol or mark <= 0:
            return
        try:
            result = self.desk.on_tick(symbol, mark)
        except StaleState as exc:
            log.warning("live watch %s: %s", symbol, exc)
            return
        self._fan_out_tick(result)

    @timer(interval=5)
    def supervise(self) -> None:
        """Mirror the state, book the daily ledger (auto-HALT on breach), check stops."""
        try:
            sup = self.desk.supervise()
        except StaleState as exc:  # the feed is down: notify alerts it, entries are refused
            log.warning("supervision skipped: %s", exc)
            _export_state(self.desk.state.get()[0])
            return
        _export_state(sup.state)
        EQUITY.set(float(sup.equity))
        EXPOSURE.set(float(sup.exposure))
        OPEN_POSITIONS.set(sup.open_positions)
        if sup.ledger is not None:
            DAILY_PNL.set(float(sup.ledger.daily_pnl))
            DRAWDOWN.set(float(sup.ledger.drawdown))
        if sup.halt_reason:
            self._change_state("HALTED", sup.halt_reason)
        for pos in sup.missing_stops:
            if self.desk.latch.escalated(pos.symbol, "stop_missing", "critical"):
                self._alert(missing_stop_alert(pos))
            self._rearm(pos.symbol)

    # --- HTTP ---
    @http("POST", "/check")
    @api
    def check_http(self, request: Request) -> tuple[int, Any]:
        require_api_key(request, self.config.security.api_key_values())
        try:
            return 200, self.check(read_json_object(request, 64 * 1024))
        except ValidationError as exc:
            err = exc.errors()[0]
            raise HttpError(422, f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None

    @http("GET", "/status")
    @api
    def status_http(self, request: Request) -> tuple[int, Any]:
        require_api_key(request, self.config.security.api_key_values())
        return 200, self.status()

    @http("POST", "/update")
    @api
    def update_http(self, request: Request) -> tuple[int, Any]:
        require_api_key(request, self.config.security.api_key_values())
        body = read_json_object(request)
        state = str(body.get("state", "")).upper()
        if state not in STATES:
            raise HttpError(422, f"state: must be one of {', '.join(STATES)}", field="state")
        return 200, self.set_state(state, str(body.get("reason", "")))

    @http("GET", "/liquidation")
    @api
    def liquidation_http(self, request: Request) -> tuple[int, Any]:
        require_api_key(request, self.config.security.api_key_values())
        a = request.args
        missing = [k for k in ("symbol", "side", "entry_price", "quantity") if k not in a]
        if missing:
            raise HttpError(400, f"missing query parameter {missing[0]}")
        if a["symbol"].upper() not in self.config.trading.allowed_symbols:
            raise HttpError(422, f"symbol: {a['symbol'][:32]} is not traded", field="symbol")
        try:
            numbers = [Decimal(a[k]) for k in ("entry_price", "quantity", "wallet_balance")
                       if k in a]
            leverage = int(a.get("leverage", self.config.leverage.leverage))
            if not all(n.is_finite() and n > 0 for n in numbers) or not 1 <= leverage <= 125:
                raise ValueError("numbers must be positive and finite, leverage 1-125")
            price = self.liquidation_price(
                a["symbol"], a["side"], Decimal(a["entry_price"]), Decimal(a["quantity"]),
                leverage, Decimal(a["wallet_balance"]) if "wallet_balance" in a else None)
        except (ValueError, ArithmeticError) as exc:  # InvalidOperation, DivisionByZero too
            raise HttpError(422, str(exc) or "invalid number") from None
        return 200, {"symbol": a["symbol"].upper(), "liquidation_price": price}

    @http("GET", "/health")
    @api
    def health(self, request: Request) -> tuple[int, Any]:
        problems = self.telemetry.health()
        return 200, {"status": "degraded" if problems else "ok", "service": RISK,
                     "checks": problems}

    @http("GET", "/metrics")
    def metrics(self, request: Request) -> Response:
        return metrics_response()

    # --- helpers (not entrypoints): fan-out, each isolated ---
    def _change_state(self, state: str, reason: str) -> dict[str, Any]:
        previous, state = self.desk.set_state(state, reason)
        _export_state(state)
        if previous != state:
            # one message per change, on the durable risk_alerts queue, with an id notify
            # de-duplicates on: a redelivery or a second notify instance sends nothing more
            change_id = uuid.uuid4().hex
            payload = {"type": "risk_state_changed", "previous": previous, "state": state,
                       "reason": reason, "change_id": change_id}
            self.telemetry.emit(RISK_STREAM, Record("state_changed", payload))
            self._alert(RiskAlert(level="info" if state == "ACTIVE" else "critical",
                                  code="STATE_CHANGED", alert_id=f"state:{change_id}",
                                  text=f"Trading state {previous} -> {state}: {reason}"))
        return {"state": state, "previous": previous, "reason": reason}

    def _alert(self, alert: RiskAlert) -> None:
        ALERTS.labels(alert.code).inc()
        try:
            self.bus.publish(RISK_EXCHANGE, RISK_ALERT_KEY, alert,
                             declare=[kombu_queue(RISK_ALERT_QUEUE)])
        except BusError:
            log.exception("risk alert %s not delivered: %s", alert.code, alert.text)
        self.telemetry.emit(RISK_STREAM, Record("risk_alert", alert.wire()))

    def _fan_out_tick(self, result: TickResult) -> None:
        for risk in result.risks:
            LIQ_DISTANCE.labels(risk.symbol).set(float(risk.liquidation_distance))
        for alert in result.alerts:
            self._alert(alert)
        for record in result.records:
            self.telemetry.emit(RISK_STREAM, record)

    def _rearm(self, symbol: str) -> None:
        """Ask execute to put the stop-loss back; tolerate an execute without ``rearm``."""
        try:
            with eventlet.Timeout(REARM_TIMEOUT_S):
                reply = self.execute.rearm(symbol)
            log.warning("asked execute to re-arm the stop-loss of %s: %s", symbol, reply)
        except (Exception, eventlet.Timeout) as exc:  # noqa: BLE001 - RemoteError, timeout
            log.error("execute.rearm(%s) failed: %s", symbol, exc)

    # --- readiness (k8s readinessProbe, compose healthcheck) ---
    readiness: ReadinessChecks = ReadinessProbe(market=True, account=True, database=True)

    @http("GET", "/ready")
    @api
    def ready(self, request: Request) -> tuple[int, Any]:
        """200 when this replica can do its job, else 503 with the failing checks."""
        result = self.readiness.run()
        return result.status, {**result.wire(), "service": RISK}

    @http("GET", "/openapi.json")
    def openapi(self, request: Request) -> Response:
        return openapi_response(self.name)
