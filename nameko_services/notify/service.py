"""Notify - Alert & Monitor Hub (HTTP 8103): alerts out, metrics, dashboard entry.

Entrypoints only: alerts go through :class:`~nameko_services.notify.alerts.Alerts`
(verbosity, the durable dedupe latch, the outbox); the timers drive
:class:`~nameko_services.notify.monitor.Monitor`; the Telegram side is a separate process,
:mod:`nameko_services.notify.telegram_worker`.
"""

from __future__ import annotations

import datetime as dtm
from typing import Any, Final

from nameko.events import event_handler
from nameko.rpc import rpc
from nameko.timer import timer
from nameko.web.handlers import http
from werkzeug.utils import redirect
from werkzeug.wrappers import Request, Response

from nameko_services.notify import messages
from nameko_services.notify.alertmanager import MAX_WEBHOOK_BYTES, parse_webhook, require_bearer
from nameko_services.notify.alerts import Alerts
from nameko_services.notify.dependencies import AlertsProvider, MonitorProvider
from nameko_services.notify.monitor import Monitor
from nameko_services.notify.outbox import LEVELS
from shared.consumer import durable_consume
from shared.health import ReadinessChecks, ReadinessProbe
from shared.models import RiskAlert
from shared.nameko_deps import Config
from shared.names import (
    BRAIN,
    EVT_POSITION_CLOSED,
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
from shared.openapi import openapi_response
from shared.settings import Settings, settings_or_exit
from shared.web import HttpError, api, metrics_response, read_json_object, require_api_key

settings_or_exit()

# Alertmanager re-sends a failed webhook within seconds and a still-firing alert every
# repeat_interval (hours): the window drops the first, keeps the reminders
ALERTMANAGER_DEDUPE_S: Final = 60


class NotifyService:
    name = NOTIFY

    config: Settings = Config()
    alerts: Alerts = AlertsProvider()
    monitor: Monitor = MonitorProvider()

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
        self.alerts.send("info", messages.signal_rejected(event), BRAIN, event["signal_id"],
                         kind=EVT_SIGNAL_REJECTED)

    @event_handler(BRAIN, EVT_SIGNAL_ACCEPTED)
    def on_signal_accepted(self, event: dict[str, Any]) -> None:
        self.alerts.send("info", messages.signal_accepted(event), BRAIN, event["signal_id"],
                         kind=EVT_SIGNAL_ACCEPTED)

    @durable_consume(kombu_queue(RISK_ALERT_QUEUE))
    def on_risk_alert(self, body: dict[str, Any]) -> None:
        alert = RiskAlert.model_validate(body)
        # an alert with an id (a trading state change) is sent once, however often it is
        # delivered and to however many notify instances
        self.alerts.send(alert.level, f"[{alert.code}] {alert.text}", RISK, alert.signal_id,
                         dedupe_key=f"risk:{alert.alert_id}" if alert.alert_id else "")

    # --- timers ---
    @timer(interval=5)
    def refresh_lag(self) -> None:
        self.monitor.refresh_lag()
        self.alerts.dead_letters()

    @timer(interval=15)
    def watch_health(self) -> None:
        for text in self.monitor.check_health():
            level = "info" if "back up" in text else "critical"
            self.alerts.send(level, text, NOTIFY)

    @timer(interval=2)
    def watch_state(self) -> None:
        """One alert when the feed's market or account state turns stale, one when fresh."""
        for alert in self.monitor.check_state():
            try:
                self.alerts.send(alert.level, alert.text, NOTIFY)
            except Exception:
                self.monitor.stale.undo(alert)
                raise

    @timer(interval=60)
    def daily_summary(self) -> None:
        text = self.monitor.daily_summary(dtm.datetime.now(dtm.UTC))
        if text:
            self.alerts.send("info", text, NOTIFY)

    # --- RPC ---
    @rpc
    def alert(self, message: str, level: str = "info") -> dict[str, str]:
        level = level.lower()
        if level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}")
        return {"status": "queued", "id": self.alerts.send(level, message, "manual") or ""}

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
                     "telegram": "enabled" if self.config.telegram.active else "log only",
                     "down": self.monitor.watch.down(),
                     "telegram_dead_letters": self.alerts.dead_letters()}

    @http("GET", "/metrics")
    def metrics(self, request: Request) -> Response:
        return metrics_response()

    # --- readiness (k8s readinessProbe, compose healthcheck) ---
    readiness: ReadinessChecks = ReadinessProbe()

    @http("GET", "/ready")
    @api
    def ready(self, request: Request) -> tuple[int, Any]:
        """200 when this replica can do its job, else 503 with the failing checks."""
        result = self.readiness.run()
        return result.status, {**result.wire(), "service": NOTIFY}

    # --- Alertmanager's webhook (receiver http_config: authorization Bearer <api key>) ---
    @http("POST", "/alertmanager")
    @api
    def alertmanager(self, request: Request) -> tuple[int, Any]:
        """Each alert of an Alertmanager group (payload version 4) into the outbox."""
        require_bearer(request, self.config.security.api_key_values())
        hook = parse_webhook(read_json_object(request, MAX_WEBHOOK_BYTES))
        queued = [self.alerts.send(a.level, a.text(), "alertmanager", dedupe_key=a.dedupe_key,
                                   dedupe_ttl_s=ALERTMANAGER_DEDUPE_S) for a in hook.alerts]
        return 202, {"status": "queued", "alerts": len(hook.alerts),
                     "queued": sum(1 for q in queued if q)}

    @http("GET", "/openapi.json")
    def openapi(self, request: Request) -> Response:
        return openapi_response(self.name)
