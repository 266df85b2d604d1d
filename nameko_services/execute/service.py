"""Execute - Trade Execution (HTTP 8102): queue-driven, idempotent, scales out."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import ccxt
from nameko.events import EventDispatcher
from nameko.rpc import RpcProxy, rpc
from nameko.timer import timer
from nameko.web.handlers import http
from prometheus_client import Counter, Histogram
from pydantic import ValidationError
from werkzeug.wrappers import Request, Response

from nameko_services.execute import events
from nameko_services.execute.dead_letters import dead_letter_outcome
from nameko_services.execute.dependencies import Engine
from nameko_services.execute.engine import ExecutionEngine, LockBusy, Outcome, is_retryable
from nameko_services.execute.reconcile import Correction, Reconciler
from shared.consumer import Retryable, dead_letter_consume, durable_consume
from shared.health import ReadinessChecks, ReadinessProbe, breaker_check
from shared.market import ExchangeUnavailable
from shared.models import CloseRequest, RiskAlert, TradeIntent
from shared.money import bracket_prices
from shared.nameko_deps import Bus, BusError, Config, MessageBus, Telemetry
from shared.names import (
    EVT_POSITION_CLOSED,
    EVT_RECONCILIATION,
    EVT_TRADE_FAILED,
    EVT_TRADE_OPENED,
    EXECUTE,
    EXECUTION_GROUP,
    RISK,
    RISK_ALERT_KEY,
    RISK_ALERT_QUEUE,
    RISK_EXCHANGE,
    SIGNALS_EXCHANGE,
    TRADE_FAILED_QUEUE,
    TRADE_KEY,
    TRADE_QUEUE,
    TRADE_STREAM,
    kombu_queue,
)
from shared.openapi import openapi_response
from shared.records import Record
from shared.settings import Settings, settings_or_exit
from shared.streams import stream_consume
from shared.telemetry import TelemetryWriter
from shared.web import HttpError, api, metrics_response, read_json_object, require_api_key

SETTINGS = settings_or_exit()
log = logging.getLogger(__name__)

ORDERS = Counter("phoenix95_orders_total", "Trade intents executed, by result", ["result"])
EXECUTION_SECONDS = Histogram("phoenix95_execution_seconds",
                              "Intent received to position protected (entry + SL + TP)")
PIPELINE_SECONDS = Histogram(
    "phoenix95_pipeline_seconds", "Webhook received to position protected (end to end)",
    buckets=(0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))


class ExecuteService:
    name = EXECUTE

    config: Settings = Config()
    engine: ExecutionEngine = Engine()
    bus: MessageBus = Bus()
    telemetry: TelemetryWriter = Telemetry()
    dispatch = EventDispatcher()
    risk = RpcProxy(RISK)

    # --- queue ---
    @durable_consume(kombu_queue(TRADE_QUEUE))
    def execute_trade(self, body: dict[str, Any]) -> None:
        """Every intent ends in one recorded outcome: retryable failures (exchange
        unreachable, 5xx, 429, symbol locked) go back through the retry queue; a refusal
        is a failed outcome (trade_failed, which releases risk's reservation, and an
        alert), never a silent dead letter."""
        started = time.perf_counter()
        try:
            if body.get("type") == "close_request":
                request = CloseRequest.model_validate(body)
                self._close_requested(request)
                return
            intent = TradeIntent.model_validate(body)
            outcome = self.engine.open(intent)
        except Exception as exc:
            if is_retryable(exc):
                raise Retryable(str(exc)) from exc
            raise
        EXECUTION_SECONDS.observe(time.perf_counter() - started)
        if outcome.status == "opened" and intent.received_at is not None:
            # to the moment both brackets were accepted (the book's write comes after)
            armed_at = outcome.details.get("armed_at")
            end = datetime.fromtimestamp(armed_at / 1000, UTC) if armed_at else datetime.now(UTC)
            PIPELINE_SECONDS.observe((end - intent.received_at).total_seconds())
        ORDERS.labels(outcome.status).inc()
        self._report(outcome)

    @dead_letter_consume(kombu_queue(TRADE_FAILED_QUEUE))
    def trade_dead_lettered(self, body: Any, reason: str) -> None:
        """A trade_execution message that ended in the DLQ (poison, retries exhausted):
        the intent's failed outcome, once (dead_letters.py). The consumer that
        dead-lettered it raised the DEAD_LETTER alert (with the signal id and reason);
        no second alert here."""
        if not isinstance(body, dict) or body.get("type") != "trade_intent":
            log.error("dead letter without a trade intent (%s): %.200s", reason, body)
            return
        try:
            intent = TradeIntent.model_validate(body)
        except ValidationError as exc:  # poison: nothing to report it for
            log.error("dead-lettered intent unreadable (%s): %s", reason, exc)
            return
        try:
            outcome = dead_letter_outcome(self.engine, intent, reason)
        except Exception as exc:
            if is_retryable(exc):
                raise Retryable(str(exc)) from exc
            raise
        if outcome is not None:
            ORDERS.labels("dead_lettered").inc()
            self._report(outcome, alert=False)

    def _close_requested(self, request: CloseRequest) -> None:
        try:
            self._closed(self.engine.close(request.symbol, request.reason))
        except ccxt.BaseError as exc:
            if is_retryable(exc):
                raise
            text = f"close of {request.symbol} refused by the exchange: {exc}"
            log.error("%s", text)
            self.telemetry.emit(TRADE_STREAM, Record("close_failed", {
                "symbol": request.symbol, "reason": str(exc)}, request.signal_id))
            self._alert("critical", "CLOSE_FAILED", text, request.symbol, request.signal_id)

    # --- reconciliation ---
    @stream_consume(TRADE_STREAM, EXECUTION_GROUP, count=50)
    def on_exchange_event(self, fields: dict[str, str]) -> None:
        """The user-data stream, as the feed records it: arm, and reconcile on change."""
        if not events.wanted(fields):  # our own telemetry, balances: no parsing
            return
        symbol = events.ExchangeEvents(self.engine.store).handle(
            Record.from_stream_fields(fields))
        if symbol is None:
            return
        # raising leaves the entry pending: it is claimed and tried again
        for correction in Reconciler(self.engine).on_event(symbol):
            self._corrected(correction)

    @timer(interval=SETTINGS.exchange.reconcile_interval, eager=True)
    def reconcile(self) -> None:
        """The safety sweep behind the events, at start-up and every reconcile_interval."""
        try:
            corrections = Reconciler(self.engine).sweep()
        except (LockBusy, ExchangeUnavailable) as exc:
            log.warning("reconciliation postponed: %s", exc)
            return
        for correction in corrections:
            self._corrected(correction)

    @rpc
    def rearm(self, symbol: str) -> list[dict[str, Any]]:
        """Reconcile one symbol now (risk calls this when a stop-loss is missing)."""
        corrections = Reconciler(self.engine).run_symbol(symbol.upper())
        for correction in corrections:
            self._corrected(correction)
        return [{"kind": c.kind, "symbol": c.symbol, "text": c.text} for c in corrections]

    # --- RPC ---
    @rpc
    def positions(self) -> list[dict[str, Any]]:
        """Open positions from the feed's account state (REST only when it is stale)."""
        return [dict(p) for p in self.engine.positions()]

    @rpc
    def close(self, symbol: str) -> dict[str, Any]:
        outcome = self.engine.close(symbol.upper(), "manual")
        self._closed(outcome)
        return {"status": outcome.status, "symbol": outcome.symbol, **outcome.details}

    @rpc
    def close_all(self) -> list[dict[str, Any]]:
        return [self.close(p["symbol"]) for p in self.engine.positions()]

    @rpc
    def trades(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.engine.store.trades(max(1, min(int(limit), 1000)))
        return [{
            "signal_id": r.signal_id, "symbol": r.symbol, "side": r.side,
            "quantity": str(r.quantity), "entry_price": str(r.entry_price),
            "exit_price": str(r.exit_price) if r.exit_price is not None else None,
            "realized_pnl": str(r.realized_pnl) if r.realized_pnl is not None else None,
            "status": r.status, "close_reason": r.close_reason,
            "opened_at": r.opened_at.isoformat(),
            "closed_at": r.closed_at.isoformat() if r.closed_at else None,
        } for r in rows]

    # --- HTTP ---
    @http("POST", "/trade")
    @api
    def trade_http(self, request: Request) -> tuple[int, Any]:
        """Manual trade: checked by risk, then queued like any signal's intent."""
        require_api_key(request, self.config.security.api_key_values())
        body = read_json_object(request)
        intent = self._manual_intent(body)
        decision = self.risk.check(intent.wire())
        if not decision["approved"]:
            return 422, {"error": "rejected by risk", "reason": "rejected_by_risk",
                         "reasons": decision["reasons"],
                         "checks": decision["checks"]}
        try:
            self.bus.publish(SIGNALS_EXCHANGE, TRADE_KEY, intent,
                             declare=[kombu_queue(TRADE_QUEUE)])
        except BusError as exc:
            raise HttpError(503, "trade queue unavailable, retry later") from exc
        return 202, {"status": "queued", "signal_id": intent.signal_id,
                     "liquidation_price": decision["liquidation_price"]}

    @http("GET", "/positions")
    @api
    def positions_http(self, request: Request) -> tuple[int, Any]:
        require_api_key(request, self.config.security.api_key_values())
        return 200, self.positions()

    @http("POST", "/close")
    @api
    def close_http(self, request: Request) -> tuple[int, Any]:
        require_api_key(request, self.config.security.api_key_values())
        body = read_json_object(request)
        if body.get("all") is True or str(body.get("symbol", "")).upper() == "ALL":
            return 200, self.close_all()
        symbol = str(body.get("symbol", "")).upper()
        if symbol not in self.config.trading.allowed_symbols:
            raise HttpError(422, "symbol: give an allowed symbol or \"all\": true",
                            field="symbol")
        return 200, self.close(symbol)

    @http("GET", "/health")
    @api
    def health(self, request: Request) -> tuple[int, Any]:
        problems = self.telemetry.health()
        breaker = self.engine.gw.breaker.current_state
        if breaker == "open":
            problems["exchange"] = "circuit open"
        return 200, {"status": "degraded" if problems else "ok", "service": EXECUTE,
                     "checks": problems}

    @http("GET", "/metrics")
    def metrics(self, request: Request) -> Response:
        return metrics_response()

    # --- helpers ---
    def _manual_intent(self, body: dict[str, Any]) -> TradeIntent:
        symbol = str(body.get("symbol", "")).upper()
        side = str(body.get("side", "")).upper()
        if symbol not in self.config.trading.allowed_symbols:
            raise HttpError(422, f"symbol: {symbol or 'missing'} is not traded", field="symbol")
        if side not in ("LONG", "SHORT"):
            raise HttpError(422, "side: must be LONG or SHORT", field="side")
        try:
            quantity = Decimal(str(body["quantity"]))
        except Exception:  # noqa: BLE001 - any unparsable quantity is the caller's error
            raise HttpError(422, "quantity: a positive number is required",
                            field="quantity") from None
        if not quantity.is_finite() or quantity <= 0:  # NaN/Infinity parse as Decimals
            raise HttpError(422, "quantity: a positive number is required", field="quantity")
        lev = self.config.leverage
        gw = self.engine.gw
        price, _ = gw.last_price(symbol)
        stop, take = bracket_prices(side, price, Decimal(str(lev.stop_loss_percent)),  # type: ignore[arg-type]
                                    Decimal(str(lev.take_profit_percent)), gw.tick_size(symbol))
        key = str(body.get("id") or uuid.uuid4().hex)
        return TradeIntent(
            signal_id=uuid.uuid4().hex, idempotency_key=f"manual:{key}", symbol=symbol,
            side=side, quantity=gw.amount_to_precision(symbol, quantity),
            reference_price=price, leverage=lev.leverage, margin_mode=lev.margin_mode,
            stop_loss=stop, take_profit=take, margin=quantity * price / lev.leverage,
            strategy="manual", received_at=datetime.now(UTC))

    def _report(self, outcome: Outcome, *, alert: bool = True) -> None:
        d = outcome.details
        if outcome.status in ("opened", "duplicate"):
            self.telemetry.emit(TRADE_STREAM, Record("entry_filled", {
                "symbol": outcome.symbol, "side": d.get("side"), "quantity": d.get("quantity"),
                "entry_price": d.get("entry_price"), "leverage": d.get("leverage"),
                "margin": d.get("margin"), "status": outcome.status,
                "filled_at": d.get("filled_at")}, outcome.signal_id))
            if outcome.status == "duplicate":
                return
            self.telemetry.emit(TRADE_STREAM, Record("brackets_placed", {
                "symbol": outcome.symbol, "stop_loss": d.get("stop_loss"),
                "take_profit": d.get("take_profit"), "sl_client_id": d.get("sl_client_id"),
                "tp_client_id": d.get("tp_client_id"),
                "stop_loss_armed": d.get("stop_loss_armed"),
                "take_profit_armed": d.get("take_profit_armed"),
                "liquidation_price": d.get("liquidation_price"),
                "armed_at": d.get("armed_at")}, outcome.signal_id))
            self.dispatch(EVT_TRADE_OPENED, {
                "type": "trade_opened", "signal_id": outcome.signal_id,
                "symbol": outcome.symbol, "side": d["side"], "quantity": d["quantity"],
                "entry_price": d["entry_price"], "stop_loss": d["stop_loss"],
                "take_profit": d["take_profit"], "liquidation_price": d["liquidation_price"],
                "margin": d["margin"], "leverage": d["leverage"]})
        else:
            self.telemetry.emit(TRADE_STREAM, Record("trade_failed", {
                "symbol": outcome.symbol, "reason": outcome.reason}, outcome.signal_id))
            self.dispatch(EVT_TRADE_FAILED, {"type": "trade_failed",
                                             "signal_id": outcome.signal_id,
                                             "symbol": outcome.symbol, "reason": outcome.reason})
            if not alert:
                return
            if outcome.status == "blocked":
                self._preflight_failed(outcome)
            else:
                critical = "position closed" in outcome.reason or \
                    "refused" in outcome.reason or "idempotency" in outcome.reason
                code = "INTENT_EXPIRED" if outcome.reason == "intent_expired" else \
                    "TRADE_FAILED"
                self._alert("critical" if critical else "warning", code,
                            f"{outcome.symbol} not traded: {outcome.reason}", outcome.symbol,
                            outcome.signal_id)

    def _preflight_failed(self, outcome: Outcome) -> None:
        """No order was sent; ask risk to stop new entries until someone looks."""
        try:
            self.risk.set_state("REDUCING", f"{outcome.symbol}: {outcome.reason}")
        except Exception:
            log.exception("could not switch risk to REDUCING")
        self._alert("critical", "PREFLIGHT_FAILED", outcome.reason, outcome.symbol,
                    outcome.signal_id)

    def _corrected(self, c: Correction) -> None:
        self.telemetry.emit(TRADE_STREAM, Record("reconciliation", {
            "kind": c.kind, "symbol": c.symbol, "text": c.text, **c.details}, c.signal_id))
        self.dispatch(EVT_RECONCILIATION, {"type": "reconciliation", "kind": c.kind,
                                           "signal_id": c.signal_id, "symbol": c.symbol,
                                           "text": c.text})
        if c.kind in ("booked_close", "emergency_close"):
            payload = {"symbol": c.symbol, "reason": c.details.get("reason", c.kind),
                       "exit_price": c.details.get("exit_price"),
                       "realized_pnl": c.details.get("realized_pnl")}
            self.telemetry.emit(TRADE_STREAM, Record("position_closed", payload, c.signal_id))
            self.dispatch(EVT_POSITION_CLOSED, {"type": "position_closed",
                                                "signal_id": c.signal_id, **payload})
        if c.kind != "booked_close" or c.level == "critical":
            self._alert(c.level, f"RECONCILIATION_{c.kind.upper()}", c.text, c.symbol,
                        c.signal_id)

    def _alert(self, level: str, code: str, text: str, symbol: str, signal_id: str) -> None:
        try:
            self.bus.publish(RISK_EXCHANGE, RISK_ALERT_KEY, RiskAlert(
                level=level, code=code, text=text, symbol=symbol,
                signal_id=signal_id), declare=[kombu_queue(RISK_ALERT_QUEUE)])
        except BusError:
            log.exception("alert not queued: %s %s", code, text)

    def _closed(self, outcome: Outcome) -> None:
        if outcome.status != "closed":
            return
        d = outcome.details
        payload = {"symbol": outcome.symbol, "reason": outcome.reason,
                   "exit_price": d.get("exit_price"), "realized_pnl": d.get("realized_pnl")}
        self.telemetry.emit(TRADE_STREAM, Record("position_closed", payload, outcome.signal_id))
        self.dispatch(EVT_POSITION_CLOSED, {"type": "position_closed",
                                            "signal_id": outcome.signal_id, **payload})

    # --- readiness (k8s readinessProbe, compose healthcheck) ---
    readiness: ReadinessChecks = ReadinessProbe(market=True, account=True, database=True)

    @http("GET", "/ready")
    @api
    def ready(self, request: Request) -> tuple[int, Any]:
        """200 when this replica can do its job, else 503 with the failing checks."""
        result = self.readiness.run([breaker_check(self.engine.gw.breaker.current_state)])
        return result.status, {**result.wire(), "service": EXECUTE}

    @http("GET", "/openapi.json")
    def openapi(self, request: Request) -> Response:
        return openapi_response(self.name)
