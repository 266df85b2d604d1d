"""Notify's watch duties, driven by its timers: consumer lag, component health, the feed's
state age and the daily summary."""

from __future__ import annotations

import datetime as dtm

import redis
from eventlet import tpool

from nameko_services.notify.commands import RpcControl
from nameko_services.notify.engine import (
    HealthWatch,
    LagGauges,
    StaleWatch,
    StateAlert,
    broker_health,
    format_daily_summary,
    http_health,
    summary_due,
)
from shared import lag as lag_probe
from shared.names import NOTIFY, NOTIFY_SUMMARY_PREFIX, SERVICES
from shared.settings import Settings
from shared.state import StateReader


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
        svc = self.settings.services
        targets = {name: f"{svc.url_of(name)}/health" for name in SERVICES if name != NOTIFY}
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
