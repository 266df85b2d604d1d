"""Brain - Signal Intelligence (HTTP 8100): TradingView intake, Phoenix 95 analysis."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import eventlet
import redis
from eventlet import tpool
from nameko.events import EventDispatcher
from nameko.web.handlers import http
from werkzeug.wrappers import Request, Response

from nameko_services.brain import metrics
from nameko_services.brain.dependencies import Admission, BrainEngineProvider, Gate, IntakeGate
from nameko_services.brain.engine import BrainEngine, Decision
from nameko_services.brain.intake import (
    check_secret,
    check_source,
    client_address,
    parse_alert,
    read_body,
    to_signal,
)
from nameko_services.brain.track_record import closed_trade
from shared.consumer import Retryable, durable_consume
from shared.health import ReadinessChecks, ReadinessProbe
from shared.models import CloseRequest, RiskDecision, Signal, SignalRejectedEvent
from shared.nameko_deps import Bus, BusError, Config, MessageBus, Telemetry
from shared.names import (
    AUTH_HEADER,
    BRAIN,
    BRAIN_GROUP,
    EVT_SIGNAL_ACCEPTED,
    EVT_SIGNAL_REJECTED,
    EXECUTE,
    IDEMPOTENCY_WINDOW_S,
    REC_POSITION_CLOSED,
    RISK,
    SIGNAL_KEY,
    SIGNAL_QUEUE,
    SIGNAL_STREAM,
    SIGNALS_EXCHANGE,
    TRADE_KEY,
    TRADE_STREAM,
    kombu_queue,
)
from shared.openapi import openapi_response
from shared.records import Record
from shared.settings import Settings, settings_or_exit
from shared.signed_rpc import MessageHeaders, SignedRpcProxy, signed_rpc
from shared.signing import Verifier, pair_key, sign_call
from shared.streams import stream_consume
from shared.telemetry import TelemetryWriter
from shared.web import (
    HttpError,
    api,
    json_response,
    metrics_response,
    require_api_key,
)

settings_or_exit()  # fail fast, one line, before nameko connects anywhere
log = logging.getLogger(__name__)


class RateLimited(Exception):
    """The sender is over its per-minute budget for ``wait`` more seconds."""

    def __init__(self, wait: int) -> None:
        super().__init__(f"rate limited for {wait}s")
        self.wait = wait


class BrainService:
    name = BRAIN

    config: Settings = Config()
    gate: IntakeGate = Gate()
    engine: BrainEngine = BrainEngineProvider()
    bus: MessageBus = Bus()
    telemetry: TelemetryWriter = Telemetry()
    dispatch = EventDispatcher()
    risk = SignedRpcProxy(RISK)
    headers: dict[str, Any] = MessageHeaders()

    # --- HTTP ---
    @http("POST", "/webhook")
    @api
    def webhook(self, request: Request) -> Response | tuple[int, Any]:
        """TradingView intake: authenticate, validate, de-duplicate, queue durably, 202.

        Authentication comes first: an unauthenticated request never spends the rate
        budget of the real sender and leaves no record (a metric only), so a flood of
        them can neither lock TradingView out nor fill the streams. Cheap checks only
        (one Redis round trip, no exchange): the analysis runs in :meth:`process_signal`,
        behind the durable queue."""
        started = time.perf_counter()
        sec = self.config.security
        client = client_address(request.remote_addr, request.headers.get("X-Forwarded-For"),
                                sec.trusted_proxies)
        authenticated = False
        try:
            if sec.source_allowlist_enabled:
                check_source(client, sec.source_allowlist)
            body = read_body(request)
            check_secret(body, sec.webhook_secret.get_secret_value())
            authenticated = True
            signal = self._validated(body, client)
            admission = self.gate.admit(client, signal.scoped_key, signal.signal_id,
                                        entry=signal.side is not None)
        except RateLimited as exc:
            return self._rate_limited(client, exc.wait)
        except HttpError as exc:
            reason = exc.extra.setdefault("reason", metrics.reason_of(exc))
            self._rejected(reason, exc.message, client, record=authenticated)
            raise
        except redis.RedisError as exc:
            self._rejected("unavailable", f"intake store: {exc}", client, record=authenticated)
            raise HttpError(503, "intake temporarily unavailable, retry later",
                            reason="unavailable") from exc
        if admission.verdict == "rate_limited":
            return self._rate_limited(client, admission.wait)
        if admission.verdict == "halted":
            # closing alerts never get here: closes are always allowed
            reason = admission.detail.lower()
            message = f"trading is {admission.detail}: new entries are refused"
            self._rejected(reason, message, client)
            raise HttpError(423, message, reason=reason)
        if admission.verdict in ("duplicate", "in_flight"):
            status, payload = self._duplicate(admission)
            if status == 503:
                return json_response(status, payload,
                                     headers={"Retry-After": str(admission.wait)})
            return status, payload
        return self._queue(signal, started)

    @http("POST", "/analyze")
    @api
    def analyze_http(self, request: Request) -> tuple[int, Any]:
        """Dry-run analysis of an alert body (the secret is not needed: X-API-Key is)."""
        require_api_key(request, self.config.security.api_key_values())
        body = read_body(request)
        secret = self.config.security.webhook_secret.get_secret_value()
        signal = parse_alert({**body, "secret": secret}, secret,
                             self.config.trading.allowed_symbols)
        return 200, self._dry_run(signal)

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
    @signed_rpc(unless=lambda args, kwargs: bool(
        kwargs.get("dry_run", args[1] if len(args) > 1 else True)))
    def analyze(self, signal: dict[str, Any], dry_run: bool = True) -> dict[str, Any]:
        """Score a signal (a webhook body without the secret).

        ``dry_run=True`` (default): the same decision the queue consumer would take -
        features, model version, every gate, the size - without trading it.
        ``dry_run=False``: queue it like a webhook (idempotent on its ``id``); only a
        signed operator may (names.SIGNED_RPCS): it skips the webhook's secret."""
        secret = self.config.security.webhook_secret.get_secret_value()
        parsed = parse_alert({**signal, "secret": secret}, secret,
                             self.config.trading.allowed_symbols)
        if dry_run:
            return self._dry_run(parsed)
        status, payload = self._enqueue(parsed, time.perf_counter())
        return {**payload, "http_status": status}

    # --- queue ---
    @durable_consume(kombu_queue(SIGNAL_QUEUE))
    def process_signal(self, body: dict[str, Any]) -> None:
        self._verify_queued(body)  # refused: dead-lettered, never analysed
        signal = Signal.model_validate(body)
        if signal.action == "close":
            request = CloseRequest(signal_id=signal.signal_id,
                                   idempotency_key=signal.idempotency_key, symbol=signal.symbol)
            self._publish_trade(request)
            return
        started = time.perf_counter()
        try:
            decision = self._decide(signal)
        except redis.RedisError as exc:
            # retried 3x, 5 s apart; past analysis_timeout the retry rejects the signal
            raise Retryable(f"market data unavailable: {exc}") from exc
        metrics.ANALYSIS_SECONDS.observe(time.perf_counter() - started)
        analysis = decision.analysis
        self.telemetry.emit(SIGNAL_STREAM, Record("signal_scored", {
            **analysis.wire(), "type": "signal_scored", "strategy": signal.strategy,
            "idempotency_key": signal.idempotency_key}, signal.signal_id))
        if decision.intent is None:
            self._signal_rejected(signal, list(analysis.reasons))
            return
        risk = self._risk_check(decision.intent.wire())
        if not risk.approved:
            self._signal_rejected(signal, list(risk.reasons))
            return
        self._publish_trade(decision.intent.model_copy(update={"approval": risk.approval}))
        self.dispatch(EVT_SIGNAL_ACCEPTED, {"type": "signal_accepted",
                                            "signal_id": signal.signal_id,
                                            "symbol": signal.symbol, "side": signal.side})

    @stream_consume(TRADE_STREAM, BRAIN_GROUP, count=50, start_id="0", with_id=True)
    def on_trade_event(self, entry_id: str, fields: dict[str, str]) -> None:
        """Closed positions (execute's ``position_closed``, with the intent's strategy)
        feed the strategies' track record, in brain's own table. Idempotent per signal:
        a group brain creates itself starts at the stream's oldest retained entry
        (``scripts/up`` creates it at the end, like every group)."""
        if fields.get("type") != REC_POSITION_CLOSED:  # most of the stream: no parsing
            return
        trade = closed_trade(Record.from_stream_fields(fields))
        if trade is None:
            return
        # in a real thread: a SQL commit (SQLite's fsync, a lock held by execute) would
        # otherwise stop every greenlet of this process, the webhook's included
        tpool.execute(self.engine.learn, entry_id, trade)

    # --- helpers (not entrypoints) ---
    def _validated(self, body: dict[str, Any], client: str) -> Signal:
        """The signal of an authenticated body; an invalid one spends the sender's rate
        budget too, so its rejection records stay bounded by the limit."""
        try:
            return to_signal(body, self.config.trading.allowed_symbols,
                             max_age_s=self.config.security.max_alert_age_seconds,
                             max_skew_s=self.config.security.max_clock_skew_seconds)
        except HttpError:
            wait = self.gate.allow(client)
            if wait:
                raise RateLimited(wait) from None
            raise

    def _rate_limited(self, client: str, wait: int) -> Response:
        self._rejected("rate_limited", f"{client} over the per-minute limit", client,
                       record=False)
        return json_response(429, {"error": "rate limit exceeded", "retry_after": wait,
                                   "reason": "rate_limited"},
                             headers={"Retry-After": str(wait)})

    def _enqueue(self, signal: Signal, started: float) -> tuple[int, dict[str, Any]]:
        admission = self.gate.claim(signal.scoped_key, signal.signal_id)
        if admission.verdict != "ok":
            return self._duplicate(admission)
        return self._queue(signal, started)

    @staticmethod
    def _duplicate(admission: Admission) -> tuple[int, dict[str, Any]]:
        """200, not an error: TradingView retries an alert it thinks was lost. While the
        earlier one is not queued yet (``in_flight``), 503 + Retry-After: if the brain that
        claimed it died before queueing it, a later retry is accepted."""
        if admission.verdict == "in_flight":
            metrics.WEBHOOKS.labels("retry", "in_flight").inc()
            return 503, {"error": "this alert id is being queued by another request, retry "
                                  "later", "reason": "in_flight",
                         "signal_id": admission.detail, "retry_after": admission.wait}
        metrics.WEBHOOKS.labels("duplicate", "duplicate").inc()
        return 200, {"status": "duplicate", "signal_id": admission.detail,
                     "reason": "duplicate",
                     "detail": "this alert id was already received for this strategy and "
                               f"symbol within {IDEMPOTENCY_WINDOW_S // 3600} h"}

    def _queue(self, signal: Signal, started: float) -> tuple[int, dict[str, Any]]:
        """Publish a claimed signal durably, signed by brain (only what passed intake is
        analysed); on failure release the claim and answer 503."""
        try:
            self.bus.publish(SIGNALS_EXCHANGE, SIGNAL_KEY, signal,
                             declare=[kombu_queue(SIGNAL_QUEUE)],
                             headers=self._signed(BRAIN, "signal", signal.wire()))
        except BusError as exc:
            self.gate.release(signal.scoped_key, signal.signal_id)
            log.error("signal %s not queued: %s", signal.signal_id, exc)
            self._rejected("queue_unavailable", str(exc))
            raise HttpError(503, "signal queue unavailable, retry later",
                            reason="queue_unavailable") from exc
        try:
            self.gate.confirm(signal.scoped_key, signal.signal_id)
        except redis.RedisError as exc:  # queued: the pending claim lapses, a retry re-queues
            log.warning("claim of %s not confirmed: %s", signal.signal_id, exc)
        metrics.WEBHOOKS.labels("accepted", "").inc()
        metrics.INTAKE_SECONDS.observe(time.perf_counter() - started)
        self.telemetry.emit_nowait(SIGNAL_STREAM, Record("signal_accepted", {
            "symbol": signal.symbol, "action": signal.action, "side": signal.side,
            "price": signal.price, "confidence": signal.confidence,
            "strategy": signal.strategy, "interval": signal.interval,
            "idempotency_key": signal.idempotency_key,
        }, signal.signal_id))
        return 202, {"status": "accepted", "signal_id": signal.signal_id}

    def _decide(self, signal: Signal) -> Decision:
        """Analyse within ``phoenix_95.analysis_timeout`` of the alert's receipt; past it
        the signal is rejected with ``analysis_timeout`` (never dropped)."""
        budget = self.config.phoenix_95.analysis_timeout
        waited = (datetime.now(UTC) - signal.received_at).total_seconds()
        started = time.perf_counter()
        decision: Decision | None = None
        if waited < budget:
            with eventlet.Timeout(budget - waited, False):
                decision = self.engine.analyze(signal)
        if decision is None:
            elapsed = waited + time.perf_counter() - started
            return Decision(self.engine.timed_out(signal, elapsed), None)
        return decision

    def _dry_run(self, signal: Signal) -> dict[str, Any]:
        try:
            decision = self._decide(signal)
        except redis.RedisError as exc:
            raise HttpError(503, f"market data unavailable: {exc}",
                            reason="market_data_unavailable") from exc
        intent = decision.intent.wire() if decision.intent is not None else None
        return {**decision.analysis.wire(), "dry_run": True, "intent": intent}

    def _risk_check(self, intent: dict[str, Any]) -> RiskDecision:
        timeout = self.config.phoenix_95.analysis_timeout
        try:
            with eventlet.Timeout(timeout):
                reply = self.risk.check(intent)
        except eventlet.Timeout as exc:
            raise Retryable(f"risk.check did not answer within {timeout}s") from exc
        return RiskDecision.model_validate(reply)

    def _signed(self, receiver: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """The ``x-phoenix-auth`` header of a message brain queues (none without a key)."""
        sec = self.config.security
        key = sec.signing_key.get_secret_value()
        if not key:
            return {}
        return {AUTH_HEADER: sign_call(sec.signing_identity, key, receiver, kind, [body], {})}

    def _verify_queued(self, body: dict[str, Any]) -> None:
        """Only brain signs signals, with its own key: another process that can reach the
        queue (through the default exchange, say) cannot make brain analyse a signal."""
        sec = self.config.security
        key = sec.signing_key.get_secret_value()
        own = {sec.signing_identity: pair_key(key, BRAIN)} if key else {}
        Verifier(BRAIN, own, sec.signature_max_age_s).verify(
            self.headers.get(AUTH_HEADER), "signal", [body], {}, tuple(own),
            max_age_s=IDEMPOTENCY_WINDOW_S, once=False)

    def _publish_trade(self, message: Any) -> None:
        """An intent carries risk's approval; a close request is signed by brain."""
        headers = self._signed(EXECUTE, "close_request", message.wire()) \
            if isinstance(message, CloseRequest) else {}
        try:
            # execute's queue, declared by it and scripts/up: declaring it here would need
            # read on it, which brain's broker user does not have
            self.bus.publish(SIGNALS_EXCHANGE, TRADE_KEY, message, headers=headers)
        except BusError as exc:
            raise Retryable(str(exc)) from exc

    def _signal_rejected(self, signal: Signal, reasons: list[str]) -> None:
        metrics.SIGNALS_REJECTED.labels(reasons[0] if reasons else "unknown").inc()
        event: SignalRejectedEvent = {"type": "signal_rejected", "signal_id": signal.signal_id,
                                      "symbol": signal.symbol, "reasons": reasons}
        self.dispatch(EVT_SIGNAL_REJECTED, event)

    def _rejected(self, reason: str, detail: str, client: str = "",
                  record: bool = True) -> None:
        """Count a refused alert; ``record`` it on signal:stream only when its sender is
        authenticated (an unauthenticated flood must not write to Redis/Kafka)."""
        metrics.WEBHOOKS.labels("rejected", reason).inc()
        if not record:
            return
        self.telemetry.emit_nowait(SIGNAL_STREAM, Record("signal_rejected",
                                                  {"reason": reason, "detail": detail,
                                                   "client": client}))

    # --- readiness (k8s readinessProbe, compose healthcheck) ---
    readiness: ReadinessChecks = ReadinessProbe(market=True)

    @http("GET", "/ready")
    @api
    def ready(self, request: Request) -> tuple[int, Any]:
        """200 when this replica can do its job, else 503 with the failing checks."""
        result = self.readiness.run()
        return result.status, {**result.wire(), "service": BRAIN}

    @http("GET", "/openapi.json")
    def openapi(self, request: Request) -> Response:
        return openapi_response(self.name)
