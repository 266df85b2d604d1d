"""Risk - Position & Risk Manager (HTTP 8101): the gate nothing trades without."""

from __future__ import annotations

import time
from decimal import Decimal, InvalidOperation
from typing import Any

from nameko.events import EventDispatcher
from nameko.rpc import rpc
from nameko.timer import timer
from nameko.web.handlers import http
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError
from werkzeug.wrappers import Request, Response

from nameko_services.risk.dependencies import STATES, Book, RiskBook
from nameko_services.risk.engine import RiskEngine
from shared.market import ExchangeUnavailable
from shared.models import RiskAlert, TradeIntent
from shared.money import liquidation_price as liq_price
from shared.nameko_deps import Bus, Config, MessageBus, Telemetry
from shared.names import (
    EVT_RISK_STATE_CHANGED,
    RISK,
    RISK_ALERT_KEY,
    RISK_ALERT_QUEUE,
    RISK_EXCHANGE,
    RISK_STREAM,
    kombu_queue,
)
from shared.records import Record
from shared.settings import Settings, settings_or_exit
from shared.telemetry import TelemetryWriter
from shared.web import HttpError, api, metrics_response, read_json_object, require_api_key

settings_or_exit()

CHECKS = Counter("phoenix95_risk_checks_total", "Pre-trade checks by result", ["result"])
DENIALS = Counter("phoenix95_risk_denials_total", "Pre-trade denials by reason", ["reason"])
CHECK_SECONDS = Histogram("phoenix95_risk_check_seconds", "Pre-trade check latency")
STATE = Gauge("phoenix95_trading_state", "1 for the current trading state", ["state"])
HALTED = Gauge("phoenix95_trading_halted", "1 while trading is HALTED")


def _export_state(state: str) -> None:
    for name in STATES:
        STATE.labels(name).set(1 if name == state else 0)
    HALTED.set(1 if state == "HALTED" else 0)


class RiskService:
    name = RISK

    config: Settings = Config()
    book: RiskBook = Book()
    bus: MessageBus = Bus()
    telemetry: TelemetryWriter = Telemetry()
    dispatch = EventDispatcher()

    # --- RPC ---
    @rpc
    def check(self, intent: dict[str, Any]) -> dict[str, Any]:
        """Three-stage pre-trade check of a trade intent; see RiskDecision."""
        started = time.perf_counter()
        parsed = TradeIntent.model_validate(intent)
        try:
            snap = self.book.snapshot(parsed.symbol)
        except ExchangeUnavailable as exc:
            decision: dict[str, Any] = {"type": "risk_decision", "signal_id": parsed.signal_id,
                        "approved": False, "reasons": ["exchange_unavailable"],
                        "checks": {"error": str(exc)}, "liquidation_price": None}
        else:
            decision = RiskEngine(self.config).check(parsed, snap).wire()
        CHECK_SECONDS.observe(time.perf_counter() - started)
        CHECKS.labels("approved" if decision["approved"] else "denied").inc()
        for reason in decision["reasons"]:
            DENIALS.labels(reason).inc()
        self.telemetry.emit(RISK_STREAM, Record("risk_check", {
            "symbol": parsed.symbol, "side": parsed.side, "approved": decision["approved"],
            "reasons": decision["reasons"], "liquidation_price": decision["liquidation_price"],
            "checks": decision["checks"]}, parsed.signal_id))
        return decision

    @rpc
    def status(self) -> dict[str, Any]:
        status = self.book.status()
        s = self.config
        status["limits"] = {
            "leverage": s.leverage.leverage, "margin_mode": s.leverage.margin_mode,
            "max_position_size": s.trading.max_position_size,
            "max_open_positions": s.trading.max_open_positions,
            "stop_loss_percent": s.leverage.stop_loss_percent,
            "take_profit_percent": s.leverage.take_profit_percent,
            "liquidation_buffer": s.leverage.liquidation_buffer,
        }
        _export_state(status["state"])
        return status

    @rpc
    def set_state(self, state: str, reason: str = "") -> dict[str, Any]:
        """ACTIVE / REDUCING (closes only) / HALTED (nothing new); durable."""
        state = state.upper()
        previous, _ = self.book.state.set(state, reason)  # type: ignore[arg-type]
        _export_state(state)
        if previous != state:
            payload = {"type": "risk_state_changed", "previous": previous, "state": state,
                       "reason": reason}
            self.dispatch(EVT_RISK_STATE_CHANGED, payload)
            self.telemetry.emit(RISK_STREAM, Record("state_changed", payload))
            level = "info" if state == "ACTIVE" else "critical"
            self.bus.publish(RISK_EXCHANGE, RISK_ALERT_KEY, RiskAlert(
                level=level, code="STATE_CHANGED",
                text=f"Trading state {previous} -> {state}: {reason}"),
                declare=[kombu_queue(RISK_ALERT_QUEUE)])
        return {"state": state, "previous": previous, "reason": reason}

    @rpc
    def liquidation_price(self, symbol: str, side: str, entry_price: Any, quantity: Any,
                          leverage: int, wallet_balance: Any = None) -> str:
        """Binance's isolated one-way liquidation price for these inputs."""
        side = side.upper()
        if side not in ("LONG", "SHORT"):
            raise ValueError("side must be LONG or SHORT")
        brackets = self.book.gateway.brackets(symbol.upper())
        price = liq_price(side, Decimal(str(entry_price)), Decimal(str(quantity)),  # type: ignore[arg-type]
                          int(leverage), brackets,
                          Decimal(str(wallet_balance)) if wallet_balance is not None else None)
        return str(price.quantize(Decimal("0.00000001")))

    @timer(interval=5)
    def export_state(self) -> None:
        """Keep the state gauges current for Prometheus even when nobody asks."""
        _export_state(self.book.state.get()[0])

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
        try:
            price = self.liquidation_price(
                a["symbol"], a["side"], Decimal(a["entry_price"]), Decimal(a["quantity"]),
                int(a.get("leverage", self.config.leverage.leverage)),
                Decimal(a["wallet_balance"]) if "wallet_balance" in a else None)
        except KeyError as exc:
            raise HttpError(400, f"missing query parameter {exc.args[0]}") from None
        except (ValueError, InvalidOperation) as exc:
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
