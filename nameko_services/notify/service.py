"""Notify - Alert & Monitor Hub (HTTP 8103): alerts out, metrics, dashboard entry."""

from __future__ import annotations

import logging
from typing import Any

from nameko.events import event_handler
from nameko.extensions import DependencyProvider
from nameko.rpc import rpc
from nameko.web.handlers import http
from prometheus_client import Counter
from werkzeug.utils import redirect
from werkzeug.wrappers import Request, Response

from nameko_services.notify import messages
from nameko_services.notify.outbox import LEVELS, AlertOutbox
from shared.consumer import durable_consume
from shared.models import RiskAlert
from shared.nameko_deps import Config
from shared.names import (
    BRAIN,
    EVT_POSITION_CLOSED,
    EVT_RISK_STATE_CHANGED,
    EVT_SIGNAL_ACCEPTED,
    EVT_SIGNAL_REJECTED,
    EVT_TRADE_FAILED,
    EVT_TRADE_OPENED,
    EXECUTE,
    NOTIFY,
    RISK,
    RISK_ALERT_QUEUE,
    kombu_queue,
)
from shared.settings import Settings, get_settings, settings_or_exit
from shared.web import HttpError, api, metrics_response, read_json_object, require_api_key

settings_or_exit()
log = logging.getLogger(__name__)

ALERTS = Counter("phoenix95_alerts_total", "Alerts queued for delivery", ["level", "source"])
_LOG_LEVEL = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.CRITICAL}


class Alerts:
    """Log every alert and queue it in the durable Telegram outbox."""

    def __init__(self, outbox: AlertOutbox) -> None:
        self._outbox = outbox

    def send(self, level: str, text: str, source: str, signal_id: str = "") -> str:
        ALERTS.labels(level, source).inc()
        log.log(_LOG_LEVEL.get(level, logging.INFO), "[alert:%s] %s", level, text)
        # without a Telegram token the log line above is the delivery; the outbox still
        # keeps the alert so the dashboard and a later-configured bot can see it
        return self._outbox.append(level, text, signal_id)


class AlertsProvider(DependencyProvider):
    def setup(self) -> None:
        settings = get_settings()
        self.alerts = Alerts(AlertOutbox.from_settings(settings))

    def get_dependency(self, worker_ctx: Any) -> Alerts:
        return self.alerts


class NotifyService:
    name = NOTIFY

    config: Settings = Config()
    alerts: Alerts = AlertsProvider()

    # --- events from the pipeline ---
    @event_handler(EXECUTE, EVT_TRADE_OPENED)
    def on_trade_opened(self, event: dict[str, Any]) -> None:
        self.alerts.send("info", messages.trade_opened(event), EXECUTE, event["signal_id"])

    @event_handler(EXECUTE, EVT_TRADE_FAILED)
    def on_trade_failed(self, event: dict[str, Any]) -> None:
        self.alerts.send("critical", messages.trade_failed(event), EXECUTE, event["signal_id"])

    @event_handler(EXECUTE, EVT_POSITION_CLOSED)
    def on_position_closed(self, event: dict[str, Any]) -> None:
        self.alerts.send("info", messages.position_closed(event), EXECUTE, event["signal_id"])

    @event_handler(BRAIN, EVT_SIGNAL_REJECTED)
    def on_signal_rejected(self, event: dict[str, Any]) -> None:
        self.alerts.send("info", messages.signal_rejected(event), BRAIN, event["signal_id"])

    @event_handler(BRAIN, EVT_SIGNAL_ACCEPTED)
    def on_signal_accepted(self, event: dict[str, Any]) -> None:
        self.alerts.send("info", messages.signal_accepted(event), BRAIN, event["signal_id"])

    @event_handler(RISK, EVT_RISK_STATE_CHANGED)
    def on_state_changed(self, event: dict[str, Any]) -> None:
        level = "info" if event.get("state") == "ACTIVE" else "critical"
        self.alerts.send(level, messages.state_changed(event), RISK)

    @durable_consume(kombu_queue(RISK_ALERT_QUEUE))
    def on_risk_alert(self, body: dict[str, Any]) -> None:
        alert = RiskAlert.model_validate(body)
        self.alerts.send(alert.level, f"[{alert.code}] {alert.text}", RISK, alert.signal_id)

    # --- RPC ---
    @rpc
    def alert(self, message: str, level: str = "info") -> dict[str, str]:
        level = level.lower()
        if level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}")
        return {"status": "queued", "id": self.alerts.send(level, message, "manual")}

    # --- HTTP ---
    @http("POST", "/alert")
    @api
    def alert_http(self, request: Request) -> tuple[int, Any]:
        require_api_key(request, self.config.security.api_key_values())
        body = read_json_object(request)
        message, level = body.get("message"), str(body.get("level", "info")).lower()
        if not isinstance(message, str) or not message.strip():
            raise HttpError(422, "message: a non-empty string is required", field="message")
        if level not in LEVELS:
            raise HttpError(422, f"level: one of {', '.join(LEVELS)}", field="level")
        return 202, self.alert(message, level)

    @http("GET", "/dashboard")
    def dashboard(self, request: Request) -> Response:
        return redirect(self.config.services.url_of("dashboard"), code=302)

    @http("GET", "/health")
    @api
    def health(self, request: Request) -> tuple[int, Any]:
        return 200, {"status": "ok", "service": NOTIFY,
                     "telegram": "enabled" if self.config.telegram.enabled else "log only"}

    @http("GET", "/metrics")
    def metrics(self, request: Request) -> Response:
        return metrics_response()
