"""Notify's stale-state timer through worker_factory: the monitor (the state and its latch)
and the outbox are fakes at the boundary; the latch itself is tested on real Redis in
tests/integration/test_notify_stale_state.py."""

from __future__ import annotations

from typing import Any

import pytest
from nameko.testing.services import worker_factory

from nameko_services.notify.engine import AlertPolicy, StateAlert
from tests.support.notify_fakes import MemoryLatch

STALE = StateAlert("market", "warning", "market_data_stale",
                   "[market_data_stale] Market data is stale (9.0 s old, max 5 s)")


class FakeOutbox:
    def __init__(self, fail: bool = False) -> None:
        self.items: list[tuple[str, str]] = []
        self.fail = fail

    def append(self, level: str, text: str, signal_id: str = "") -> str:
        if self.fail:
            raise ConnectionError("redis down")
        self.items.append((level, text))
        return "1-0"


class FakeStale:
    def __init__(self) -> None:
        self.undone: list[StateAlert] = []

    def undo(self, alert: StateAlert) -> None:
        self.undone.append(alert)


class FakeMonitor:
    def __init__(self, alerts: list[StateAlert]) -> None:
        self.alerts = alerts
        self.stale = FakeStale()

    def check_state(self) -> list[StateAlert]:
        return self.alerts


def _service(outbox: FakeOutbox, monitor: FakeMonitor) -> Any:
    from nameko_services.notify.alerts import Alerts
    from nameko_services.notify.service import NotifyService

    return worker_factory(NotifyService, alerts=Alerts(outbox, AlertPolicy("quiet"), MemoryLatch()),  # type: ignore[arg-type]
                          monitor=monitor)


def test_stale_state_becomes_a_warning_even_when_quiet(secrets_env: dict[str, str]) -> None:
    outbox = FakeOutbox()
    svc = _service(outbox, FakeMonitor([STALE]))

    svc.watch_state()

    assert outbox.items == [("warning", STALE.text)]


def test_an_alert_the_outbox_refused_is_handed_back_to_the_latch(
        secrets_env: dict[str, str]) -> None:
    monitor = FakeMonitor([STALE])
    svc = _service(FakeOutbox(fail=True), monitor)

    with pytest.raises(ConnectionError):
        svc.watch_state()

    assert monitor.stale.undone == [STALE]
