"""Brain - Signal Intelligence (HTTP 8100): TradingView intake, Phoenix 95 analysis."""

from __future__ import annotations

import logging
import time
from typing import Any

import eventlet
from nameko.events import EventDispatcher
from nameko.rpc import RpcProxy, rpc
from nameko.web.handlers import http
from werkzeug.wrappers import Request, Response

from nameko_services.brain import metrics
from nameko_services.brain.dependencies import Engine, Gate, IntakeGate
from nameko_services.brain.engine import BrainEngine, SizingError
from nameko_services.brain.intake import parse_alert
from shared.consumer import Retryable, durable_consume
from shared.market import ExchangeUnavailable
from shared.models import CloseRequest, RiskDecision, Signal, SignalRejectedEvent
from shared.nameko_deps import Bus, BusError, Config, MessageBus, Telemetry
from shared.names import (
    BRAIN,
    EVT_SIGNAL_ACCEPTED,
    EVT_SIGNAL_REJECTED,
    RISK,
    SIGNAL_KEY,
    SIGNAL_QUEUE,
    SIGNAL_STREAM,
    SIGNALS_EXCHANGE,
    TRADE_KEY,
    TRADE_QUEUE,
    kombu_queue,
)
from shared.records import Record
from shared.settings import Settings, settings_or_exit
from shared.telemetry import TelemetryWriter
from shared.web import (
    HttpError,
    api,
    json_response,
    metrics_response,
    read_json_object,
    require_api_key,
)

settings_or_exit()  # fail fast, one line, before nameko connects anywhere
log = logging.getLogger(__name__)


class BrainService:
    name = BRAIN

    config: Settings = Config()
    gate: IntakeGate = Gate()
    engine: BrainEngine = Engine()
    bus: MessageBus = Bus()
    telemetry: TelemetryWriter = Telemetry()
    dispatch = EventDispatcher()
    risk = RpcProxy(RISK)

    # --- HTTP ---
    @http("POST", "/webhook")
    @api
    def webhook(self, request: Request) -> Response | tuple[int, Any]:
        started = time.perf_counter()
        client = request.remote_addr or "unknown"
        wait = self.gate.allow(client)
        if wait:
            self._rejected("rate_limited", f"{client} over the per-minute limit")
            return json_response(429, {"error": "rate limit exceeded", "retry_after": wait},
                                 headers={"Retry-After": str(wait)})
        try:
            body = read_json_object(request)
            signal = parse_alert(
                body, self.config.security.webhook_secret.get_secret_value(),
                self.config.trading.allowed_symbols,
            )
        except HttpError as exc:
            self._rejected(metrics.reason_of(exc), exc.message)
            raise
        earlier = self.gate.claim(signal.idempotency_key, signal.signal_id)
        if earlier is not None:
            metrics.WEBHOOKS.labels("duplicate", "duplicate").inc()
            return 200, {"status": "duplicate", "signal_id": earlier}
        try:
            self.bus.publish(SIGNALS_EXCHANGE, SIGNAL_KEY, signal,
                             declare=[kombu_queue(SIGNAL_QUEUE)])
        except BusError as exc:
            self.gate.release(signal.idempotency_key, signal.signal_id)
            log.error("signal %s not queued: %s", signal.signal_id, exc)
            self._rejected("queue_unavailable", str(exc))
            raise HttpError(503, "signal queue unavailable, retry later") from exc
        metrics.WEBHOOKS.labels("accepted", "").inc()
        metrics.INTAKE_SECONDS.observe(time.perf_counter() - started)
        self.telemetry.emit(SIGNAL_STREAM, Record("signal_accepted", {
            "symbol": signal.symbol, "action": signal.action, "side": signal.side,
            "price": signal.price, "confidence": signal.confidence,
            "strategy": signal.strategy, "interval": signal.interval,
            "idempotency_key": signal.idempotency_key,
        }, signal.signal_id))
        return 202, {"status": "accepted", "signal_id": signal.signal_id}

    @http("POST", "/analyze")
    @api
    def analyze_http(self, request: Request) -> tuple[int, Any]:
        require_api_key(request, self.config.security.api_key_values())
        body = read_json_object(request)
        body.setdefault("secret", self.config.security.webhook_secret.get_secret_value())
        signal = parse_alert(body, self.config.security.webhook_secret.get_secret_value(),
                             self.config.trading.allowed_symbols)
        return 200, self._analyze(signal)

    @http("GET", "/health")
    @api
    def health(self, request: Request) -> tuple[int, Any]:
        problems = self.telemetry.health()
        return 200, {"status": "degraded" if problems else "ok", "service": BRAIN,
                     "checks": problems}

    @http("GET", "/metrics")
    def metrics(self, request: Request) -> Response:
        return metrics_response()

    # --- RPC ---
    @rpc
    def analyze(self, signal: dict[str, Any]) -> dict[str, Any]:
        """Score a signal (webhook body without the secret) without trading it."""
        parsed = parse_alert(
            {**signal, "secret": self.config.security.webhook_secret.get_secret_value()},
            self.config.security.webhook_secret.get_secret_value(),
            self.config.trading.allowed_symbols,
        )
        return self._analyze(parsed)

    # --- queue ---
    @durable_consume(kombu_queue(SIGNAL_QUEUE))
    def process_signal(self, body: dict[str, Any]) -> None:
        signal = Signal.model_validate(body)
        if signal.action == "close":
            request = CloseRequest(signal_id=signal.signal_id,
                                   idempotency_key=signal.idempotency_key, symbol=signal.symbol)
            self._publish_trade(request)
            return
        started = time.perf_counter()
        try:
            analysis = self.engine.analyze(signal)
            intent = self.engine.intent(signal, analysis) if analysis.decision == "approved" \
                else None
        except ExchangeUnavailable as exc:
            raise Retryable(f"market data unavailable: {exc}") from exc
        except SizingError as exc:
            analysis = analysis.model_copy(update={"decision": "rejected", "reasons": (str(exc),)})
            intent = None
        metrics.ANALYSIS_SECONDS.observe(time.perf_counter() - started)
        self.telemetry.emit(SIGNAL_STREAM, Record("signal_scored", {
            **analysis.wire(), "type": "signal_scored"}, signal.signal_id))
        if intent is None:
            self._signal_rejected(signal, list(analysis.reasons))
            return
        decision = self._risk_check(intent.wire())
        if not decision.approved:
            self._signal_rejected(signal, list(decision.reasons))
            return
        self._publish_trade(intent)
        self.dispatch(EVT_SIGNAL_ACCEPTED, {"type": "signal_accepted",
                                            "signal_id": signal.signal_id,
                                            "symbol": signal.symbol, "side": signal.side})

    # --- helpers (not entrypoints) ---
    def _analyze(self, signal: Signal) -> dict[str, Any]:
        try:
            return self.engine.analyze(signal).wire()
        except ExchangeUnavailable as exc:
            raise HttpError(503, f"market data unavailable: {exc}") from exc

    def _risk_check(self, intent: dict[str, Any]) -> RiskDecision:
        timeout = self.config.phoenix_95.analysis_timeout
        try:
            with eventlet.Timeout(timeout):
                reply = self.risk.check(intent)
        except eventlet.Timeout as exc:
            raise Retryable(f"risk.check did not answer within {timeout}s") from exc
        return RiskDecision.model_validate(reply)

    def _publish_trade(self, message: Any) -> None:
        try:
            self.bus.publish(SIGNALS_EXCHANGE, TRADE_KEY, message,
                             declare=[kombu_queue(TRADE_QUEUE)])
        except BusError as exc:
            raise Retryable(str(exc)) from exc

    def _signal_rejected(self, signal: Signal, reasons: list[str]) -> None:
        metrics.SIGNALS_REJECTED.labels(reasons[0] if reasons else "unknown").inc()
        event: SignalRejectedEvent = {"type": "signal_rejected", "signal_id": signal.signal_id,
                                      "symbol": signal.symbol, "reasons": reasons}
        self.dispatch(EVT_SIGNAL_REJECTED, event)

    def _rejected(self, reason: str, detail: str) -> None:
        metrics.WEBHOOKS.labels("rejected", reason).inc()
        self.telemetry.emit(SIGNAL_STREAM, Record("signal_rejected",
                                                  {"reason": reason, "detail": detail}))

