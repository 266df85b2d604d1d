"""Notify - Alert & Monitor Hub (HTTP 8103): alerts out, metrics, dashboard entry."""

from __future__ import annotations

import datetime as dtm
import logging
from typing import Any

import redis
from eventlet import tpool
from nameko.events import event_handler
from nameko.extensions import DependencyProvider
from nameko.rpc import rpc
from nameko.timer import timer
from nameko.web.handlers import http
from prometheus_client import Counter
from werkzeug.utils import redirect
from werkzeug.wrappers import Request, Response

from nameko_services.notify import messages
from nameko_services.notify.alertmanager import MAX_WEBHOOK_BYTES, parse_webhook, require_bearer
from nameko_services.notify.commands import RpcControl
from nameko_services.notify.engine import (
    AlertPolicy,
    HealthWatch,
    LagGauges,
    StaleWatch,
    StateAlert,
    broker_health,
    format_daily_summary,
    http_health,
    state_key,
    state_key_from_text,
    summary_due,
)
from nameko_services.notify.outbox import LEVELS, AlertOutbox
from shared import lag as lag_probe
from shared.consumer import durable_consume
from shared.health import ReadinessChecks, ReadinessProbe
from shared.leader import LeaderLease, Leadership
from shared.models import RiskAlert
from shared.nameko_deps import Config, make_redis
from shared.names import (
    BRAIN,
    DUTY_NOTIFY_MONITOR,
    EVT_POSITION_CLOSED,
    EVT_RISK_STATE_CHANGED,
    EVT_SIGNAL_ACCEPTED,
    EVT_SIGNAL_REJECTED,
    EVT_TRADE_FAILED,
    EVT_TRADE_OPENED,
    EXECUTE,
    FEED,
    NOTIFY,
    NOTIFY_SUMMARY_PREFIX,
    RISK,
    RISK_ALERT_QUEUE,
    SERVICES,
    kombu_queue,
)
from shared.openapi import openapi_response
from shared.settings import Settings, get_settings, settings_or_exit
from shared.state import StateReader
from shared.web import HttpError, api, metrics_response, read_json_object, require_api_key

settings_or_exit()
log = logging.getLogger(__name__)

ALERTS = Counter("phoenix95_alerts_total", "Alerts queued for delivery", ["level", "source"])
_LOG_LEVEL = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.CRITICAL}


class Alerts:
    """Filter (verbosity, duplicates), log every alert and queue it in the durable outbox."""

    def __init__(self, outbox: AlertOutbox, policy: AlertPolicy) -> None:
        self._outbox = outbox
        self.policy = policy

    def send(self, level: str, text: str, source: str, signal_id: str = "",
             kind: str = "", dedupe_key: str = "") -> str | None:
        """Queue one alert; None if the policy filtered it out."""
        if kind and not self.policy.wants(kind):
            return None
        if dedupe_key and not self.policy.first_time(dedupe_key):
            return None
        ALERTS.labels(level, source).inc()
        log.log(_LOG_LEVEL.get(level, logging.INFO), "[alert:%s] %s", level, text)
        # without a Telegram token the log line above is the delivery; the outbox still
        # keeps the alert so the dashboard and a later-configured bot can see it
        return self._outbox.append(level, text, signal_id)

    def dead_letters(self) -> int | None:
        """Alerts Telegram refused for good (refreshes its gauge); None if Redis is down."""
        try:
            return self._outbox.dead_letter_count()
        except redis.RedisError:
            return None


class AlertsProvider(DependencyProvider):
    def setup(self) -> None:
        settings = get_settings()
        self.alerts = Alerts(AlertOutbox.from_settings(settings),
                             AlertPolicy(settings.telegram.verbosity))

    def get_dependency(self, worker_ctx: Any) -> Alerts:
        return self.alerts


class Monitor:
    """Consumer lag, component health, the feed's state age and the daily summary (driven
    by notify's timers)."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.redis = client
        self.gauges = LagGauges()
        self.watch = HealthWatch()
        self.state = StateReader(client, settings)
        self.stale = StaleWatch(client, settings.trading.allowed_symbols, self.state.max_age_ms)
        self.control = RpcControl(settings.message_queue.amqp_uri, timeout=10.0)
        self.last_lags: list[lag_probe.Lag] = []

    def refresh_lag(self) -> list[lag_probe.Lag]:
        s = self.settings
        lags = lag_probe.rabbitmq_lag(s.message_queue.amqp_uri)
        lags += lag_probe.redis_lag(self.redis)
        # librdkafka blocks in C: keep the eventlet hub running
        lags += tpool.execute(lag_probe.kafka_lag, s.kafka.bootstrap_servers,
                              s.kafka.consumer_group)
        self.gauges.publish(lags)
        self.last_lags = lags
        return lags

    def check_state(self) -> list[StateAlert]:
        """The feed's state turning stale or fresh again (one alert across instances)."""
        return self.stale.observe(self.state.freshness())

    def health_targets(self) -> dict[str, str]:
        """Each service's and the feed's ``/ready`` at its advertised address: a process
        that answers but cannot work (consumers gone, stale market) is down for the watch."""
        svc = self.settings.services
        targets = {name: f"{svc.url_of(name)}/ready" for name in (*SERVICES, FEED)
                   if name != NOTIFY}
        if self.settings.exchange.mode == "paper":
            targets["paper_exchange"] = f"{self.settings.paper_exchange.base_url}/health"
        return targets

    def check_health(self) -> list[str]:
        """Observe every component; the texts of the transitions to alert on."""
        texts = []
        observations = {name: http_health(url) for name, url in self.health_targets().items()}
        observations.update(broker_health(self.last_lags))
        for component, (ok, detail) in observations.items():
            transition = self.watch.observe(component, ok, detail)
            if transition is not None:
                texts.append(transition.text())
        return texts

    def daily_summary(self, now: dtm.datetime) -> str | None:
        """The summary text if it is due now and no notify instance sent today's yet."""
        if not summary_due(now, self.settings.telegram.daily_summary_hour):
            return None
        key = f"{NOTIFY_SUMMARY_PREFIX}{now.date().isoformat()}"
        if not self.redis.set(key, "1", nx=True, ex=2 * 86400):
            return None
        errors = []
        status, trades, positions = None, [], []
        try:
            status = self.control.risk_status()
        except Exception as exc:  # noqa: BLE001 - the summary says what is missing
            errors.append(f"risk.status: {type(exc).__name__}")
        try:
            trades = self.control.trades(500)
            positions = self.control.positions()
        except Exception as exc:  # noqa: BLE001
            errors.append(f"execute: {type(exc).__name__}")
        return format_daily_summary(now.date(), status, trades, positions, errors)


class MonitorProvider(DependencyProvider):
    def setup(self) -> None:
        settings = get_settings()
        self.monitor = Monitor(settings, make_redis(settings))

    def get_dependency(self, worker_ctx: Any) -> Monitor:
        return self.monitor


class NotifyService:
    name = NOTIFY

    config: Settings = Config()
    alerts: Alerts = AlertsProvider()
    monitor: Monitor = MonitorProvider()
    # the health watch and the daily summary run on one notify instance: alerted once
    leader: LeaderLease = Leadership(DUTY_NOTIFY_MONITOR)

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

    @event_handler(RISK, EVT_RISK_STATE_CHANGED)
    def on_state_changed(self, event: dict[str, Any]) -> None:
        level = "info" if event.get("state") == "ACTIVE" else "critical"
        self.alerts.send(level, messages.state_changed(event), RISK,
                         dedupe_key=state_key(event.get("previous"), event.get("state"),
                                              event.get("reason")))

    @durable_consume(kombu_queue(RISK_ALERT_QUEUE))
    def on_risk_alert(self, body: dict[str, Any]) -> None:
        alert = RiskAlert.model_validate(body)
        # a state change is also announced by risk_state_changed: send it once
        key = state_key_from_text(alert.text) if alert.code.upper() == "STATE_CHANGED" else ""
        self.alerts.send(alert.level, f"[{alert.code}] {alert.text}", RISK, alert.signal_id,
                         dedupe_key=key)

    # --- timers ---
    @timer(interval=5)
    def refresh_lag(self) -> None:
        self.monitor.refresh_lag()
        self.alerts.dead_letters()

    @timer(interval=15)
    def watch_health(self) -> None:
        if not self.leader.leads():
            return
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
        if not self.leader.leads():
            return
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
        # the browser's address, not the internal one (compose/k8s: a service name)
        target = self.config.dashboard.public_url or self.config.services.url_of("dashboard")
        return redirect(target, code=302)

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
        return result.status, {**result.wire(), "service": NOTIFY,
                               "leaders": {DUTY_NOTIFY_MONITOR: self.leader.wire()}}

    # --- Alertmanager's webhook (receiver http_config: authorization Bearer <api key>) ---
    @http("POST", "/alertmanager")
    @api
    def alertmanager(self, request: Request) -> tuple[int, Any]:
        """Each alert of an Alertmanager group (payload version 4) into the outbox."""
        require_bearer(request, self.config.security.api_key_values())
        hook = parse_webhook(read_json_object(request, MAX_WEBHOOK_BYTES))
        queued = [self.alerts.send(a.level, a.text(), "alertmanager", dedupe_key=a.dedupe_key)
                  for a in hook.alerts]
        return 202, {"status": "queued", "alerts": len(hook.alerts),
                     "queued": sum(1 for q in queued if q)}

    @http("GET", "/openapi.json")
    def openapi(self, request: Request) -> Response:
        return openapi_response(self.name)
