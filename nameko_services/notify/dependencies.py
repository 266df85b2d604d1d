"""Notify's dependency providers: each hands its workers one process-wide object."""

from __future__ import annotations

from typing import Any

from nameko.extensions import DependencyProvider

from nameko_services.notify.alerts import Alerts, SentOnce
from nameko_services.notify.engine import AlertPolicy
from nameko_services.notify.monitor import Monitor
from nameko_services.notify.outbox import AlertOutbox
from shared.nameko_deps import make_redis
from shared.settings import get_settings


class AlertsProvider(DependencyProvider):
    def setup(self) -> None:
        settings = get_settings()
        outbox = AlertOutbox.from_settings(settings)
        self.alerts = Alerts(outbox, AlertPolicy(settings.telegram.verbosity),
                             SentOnce(make_redis(settings)))

    def get_dependency(self, worker_ctx: Any) -> Alerts:
        return self.alerts


class MonitorProvider(DependencyProvider):
    def setup(self) -> None:
        settings = get_settings()
        self.monitor = Monitor(settings, make_redis(settings))

    def get_dependency(self, worker_ctx: Any) -> Monitor:
        return self.monitor
