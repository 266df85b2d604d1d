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
from nameko.rpc import rpc
from nameko.timer import timer
from nameko.web.handlers import http
from prometheus_client import Counter, Histogram
from pydantic import ValidationError
from werkzeug.wrappers import Request, Response

from nameko_services.execute import events, reports
from nameko_services.execute.dead_letters import dead_letter_outcome
from nameko_services.execute.dependencies import ExecutionEngineProvider
from nameko_services.execute.engine import ExecutionEngine, LockBusy, Outcome, is_retryable
from nameko_services.execute.reconcile import Correction, Reconciler
from shared.consumer import Retryable, dead_letter_consume, durable_consume
from shared.health import ReadinessChecks, ReadinessProbe, breaker_check
from shared.leader import LEADER_TICK_S, LeaderLease, Leadership
from shared.market import ExchangeUnavailable
from shared.models import Approval, CloseRequest, RiskAlert, TradeIntent
from shared.nameko_deps import Bus, BusError, Config, MessageBus, Telemetry
from shared.names import (
    AUTH_HEADER,
    CLOSE_REQUEST_SIGNERS,
    DUTY_RECONCILIATION,
    EXECUTE,
    EXECUTION_GROUP,
    IDEMPOTENCY_WINDOW_S,
    REC_CLOSE_FAILED,
    RISK,
    RISK_ALERT_KEY,
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
from shared.signed_rpc import MessageHeaders, SignedRpcProxy, signed_rpc
from shared.signing import REFUSED, CallerRefused, Verifier, keys_of, verify_approval
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
    engine: ExecutionEngine = ExecutionEngineProvider()
    bus: MessageBus = Bus()
    telemetry: TelemetryWriter = Telemetry()
    dispatch = EventDispatcher()
    risk = SignedRpcProxy(RISK)
    headers: dict[str, Any] = MessageHeaders()
    # the periodic sweep runs on one execute instance (events reconcile everywhere)
    leader: LeaderLease = Leadership(DUTY_RECONCILIATION)

    # --- queue ---
    @durable_consume(kombu_queue(TRADE_QUEUE))
    def execute_trade(self, body: dict[str, Any]) -> None:
        """Every intent ends in one recorded outcome: retryable failures (exchange
        unreachable, 5xx, 429, symbol locked) go back through the retry queue; a refusal
        is a failed outcome (trade_failed, which releases risk's reservation, and an
        alert), never a silent dead letter. An intent without risk's signed approval, or
        a close request without its sender's signature, is such a refusal and is also
        dead-lettered (``unsigned_intent``)."""
        started = time.perf_counter()
        try:
            if body.get("type") == "close_request":
                request = CloseRequest.model_validate(body)
                self._verify_close(request, body, self.headers)
                self._close_requested(request)
                return
            intent = TradeIntent.model_validate(body)
            self._verify_intent(intent)
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

    def _verifier(self) -> Verifier:
        sec = self.config.security
        return Verifier(EXECUTE, keys_of(sec.verify_keys), sec.signature_max_age_s)

    def _verify_intent(self, intent: TradeIntent) -> None:
        try:
            verify_approval(keys_of(self.config.security.verify_keys).get(RISK),
                            intent.wire())
        except CallerRefused as exc:
            REFUSED.labels(EXECUTE, "trade_intent", exc.reason).inc()
            log.error("intent %s not traded: %s", intent.signal_id, exc)
            self._report(Outcome("failed", intent.symbol, intent.signal_id, "unsigned_intent"))
            raise

    def _verify_close(self, request: CloseRequest, body: dict[str, Any],
                      headers: dict[str, Any]) -> None:
        try:
            self._verifier().verify(headers.get(AUTH_HEADER), "close_request", [body], {},
                                    CLOSE_REQUEST_SIGNERS, max_age_s=IDEMPOTENCY_WINDOW_S,
                                    once=False)
        except CallerRefused as exc:
            self.telemetry.emit(TRADE_STREAM, Record(REC_CLOSE_FAILED, {
                "symbol": request.symbol, "reason": f"unsigned_intent: {exc}"},
                request.signal_id))
            self._alert(reports.alert("critical", "UNSIGNED_INTENT",
                                      f"close request refused: {exc}", request.symbol,
                                      request.signal_id))
            raise

    @dead_letter_consume(kombu_queue(TRADE_FAILED_QUEUE))
    def trade_dead_lettered(self, body: Any, reason: str) -> None:
        """A trade_execution message that ended in the DLQ (poison, retries exhausted):
        the intent's failed outcome, once (dead_letters.py). The consumer that
        dead-lettered it raised the DEAD_LETTER alert (with the signal id and reason);
        no second alert here."""
        if not isinstance(body, dict) or body.get("type") != "trade_intent":
            log.error("dead letter without a trade intent (%s): %.200s", reason, body)
            return
        if "unsigned_intent" in reason:  # reported when refused; its ids are not trusted
            log.error("unsigned intent dead-lettered: %.200s", reason)
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
            self.telemetry.emit(TRADE_STREAM, Record(REC_CLOSE_FAILED, {
                "symbol": request.symbol, "reason": str(exc)}, request.signal_id))
            self._alert(reports.alert("critical", "CLOSE_FAILED", text, request.symbol,
                                      request.signal_id))

    # --- reconciliation ---
    @stream_consume(TRADE_STREAM, EXECUTION_GROUP, count=50)
    def on_exchange_event(self, fields: dict[str, str]) -> None:
        """The user-data stream, as the feed records it: arm, and reconcile on change."""
        if not events.wanted(fields):  # our own telemetry, balances: no parsing
            return
        symbol = self.engine.on_exchange_record(Record.from_stream_fields(fields))
        if symbol is None:
            return
        # raising leaves the entry pending: it is claimed and tried again
        for correction in Reconciler(self.engine).on_event(symbol):
            self._corrected(correction)

    @timer(interval=LEADER_TICK_S, eager=True)
    def reconcile(self) -> None:
        """The safety sweep behind the events, on the leading instance only: when it takes
        the lead (start-up, failover) and every reconcile_interval after."""
        if not self.leader.due(self.config.exchange.reconcile_interval):
            return
        try:
            corrections = Reconciler(self.engine).sweep()
        except (LockBusy, ExchangeUnavailable) as exc:
            log.warning("reconciliation postponed: %s", exc)
            return
        for correction in corrections:
            self._corrected(correction)

    @signed_rpc
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

    @signed_rpc
    def close(self, symbol: str) -> dict[str, Any]:
        outcome = self.engine.close(symbol.upper(), "manual")
        self._closed(outcome)
        return {"status": outcome.status, "symbol": outcome.symbol, **outcome.details}

    @signed_rpc
    def close_all(self) -> list[dict[str, Any]]:
        return [self.close(p["symbol"]) for p in self.engine.positions()]

    @rpc
    def trades(self, limit: int = 50) -> list[dict[str, Any]]:
        return self.engine.trades(max(1, min(int(limit), 1000)))

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
        approval = decision.get("approval")
        intent = intent.model_copy(
            update={"approval": Approval.model_validate(approval) if approval else None})
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
        breaker = self.engine.breaker_state()
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
        key = str(body.get("id") or uuid.uuid4().hex)
        return self.engine.manual_intent(symbol, side, quantity,  # type: ignore[arg-type]
                                         f"manual:{key}")

    def _send(self, report: reports.Report) -> None:
        """Fan out what an outcome or a correction tells the others (reports.py)."""
        for record in report.records:
            self.telemetry.emit(TRADE_STREAM, record)
        for name, payload in report.events:
            self.dispatch(name, payload)
        if report.alert is not None:
            self._alert(report.alert)

    def _report(self, outcome: Outcome, *, alert: bool = True) -> None:
        """``alert=False``: a dead letter, whose consumer already raised DEAD_LETTER."""
        if outcome.status in ("opened", "duplicate"):
            self._send(reports.opened(outcome))
            return
        if outcome.status == "blocked" and alert:
            # no order was sent; ask risk to stop new entries until someone looks
            try:
                self.risk.set_state("REDUCING", f"{outcome.symbol}: {outcome.reason}")
            except Exception:
                log.exception("could not switch risk to REDUCING")
        report = reports.failed(outcome)
        if not alert:
            report.alert = None
        self._send(report)

    def _corrected(self, c: Correction) -> None:
        self._send(reports.corrected(c))

    def _alert(self, alert: RiskAlert) -> None:
        try:
            self.bus.publish(RISK_EXCHANGE, RISK_ALERT_KEY, alert)  # notify's queue
        except BusError:
            log.exception("alert not queued: %s %s", alert.code, alert.text)

    def _closed(self, outcome: Outcome) -> None:
        self._send(reports.closed(outcome))

    # --- readiness (k8s readinessProbe, compose healthcheck) ---
    readiness: ReadinessChecks = ReadinessProbe(market=True, account=True, database=True)

    @http("GET", "/ready")
    @api
    def ready(self, request: Request) -> tuple[int, Any]:
        """200 when this replica can do its job, else 503 with the failing checks."""
        result = self.readiness.run([breaker_check(self.engine.breaker_state())])
        return result.status, {**result.wire(), "service": EXECUTE,
                               "leaders": {DUTY_RECONCILIATION: self.leader.wire()}}

    @http("GET", "/openapi.json")
    def openapi(self, request: Request) -> Response:
        return openapi_response(self.name)
