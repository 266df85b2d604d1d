"""Notify's alert policy, health transitions, lag gauges, daily summary and service wiring."""

from __future__ import annotations

import datetime as dtm
from typing import Any

import pytest
from nameko.testing.services import worker_factory
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from nameko_services.notify.engine import (
    AlertPolicy,
    HealthWatch,
    LagGauges,
    broker_health,
    format_daily_summary,
    summary_due,
)
from shared.lag import Lag
from tests.support.notify_fakes import MemoryLatch


@pytest.mark.parametrize(("verbosity", "rejected", "accepted"), [
    ("quiet", False, False), ("normal", True, False), ("verbose", True, True)])
def test_verbosity_decides_which_signal_alerts_go_out(
        verbosity: str, rejected: bool, accepted: bool) -> None:
    policy = AlertPolicy(verbosity)
    assert policy.wants("signal_rejected") is rejected
    assert policy.wants("signal_accepted") is accepted
    assert policy.wants("trade_opened") and policy.wants("")


def test_unknown_verbosity_is_refused() -> None:
    with pytest.raises(ValueError):
        AlertPolicy("chatty")


def test_health_watch_reports_down_after_two_misses_and_back_once() -> None:
    watch = HealthWatch(failures=2)
    assert watch.observe("risk", True) is None
    assert watch.observe("risk", False, "refused") is None
    down = watch.observe("risk", False, "refused")
    assert down is not None and down.text() == "risk is DOWN: refused"
    assert watch.observe("risk", False, "refused") is None
    assert watch.down() == ["risk"]
    back = watch.observe("risk", True)
    assert back is not None and back.text() == "risk is back up" and watch.down() == []


def test_broker_health_is_up_if_any_probe_answered() -> None:
    lags = [Lag("redis", "a", "g", None, error="x"), Lag("redis", "b", "g", 3),
            Lag("kafka", "t", "g", None, error="timeout")]
    assert broker_health(lags) == {"redis": (True, ""), "kafka": (False, "timeout")}


def _samples(name: str) -> dict[tuple[str, ...], float]:
    text = _exposition()
    out: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value  # type: ignore[arg-type]
    return out


def _exposition() -> str:
    from prometheus_client import generate_latest

    return generate_latest(REGISTRY).decode()


def test_lag_gauges_publish_and_forget_series() -> None:
    gauges = LagGauges()
    gauges.publish([Lag("rabbitmq", "unit_q", "execute", 7, consumers=2),
                    Lag("redis", "unit:stream", "unit_group", 4, pending=1, consumers=1)])
    lag = _samples("phoenix95_consumer_lag_messages")
    assert lag[(("group", "execute"), ("source", "unit_q"))] == 7
    assert lag[(("group", "unit_group"), ("source", "unit:stream"))] == 4
    assert _samples("phoenix95_queue_consumers")[(("queue", "unit_q"),)] == 2

    gauges.publish([Lag("redis", "unit:stream", "unit_group", None, error="gone")])

    lag = _samples("phoenix95_consumer_lag_messages")
    assert (("group", "execute"), ("source", "unit_q")) not in lag
    assert (("group", "unit_group"), ("source", "unit:stream")) not in lag


def test_daily_summary_text_and_schedule() -> None:
    day = dtm.date(2026, 11, 23)
    text = format_daily_summary(
        day, {"equity": "10010", "state": "ACTIVE", "margin_usage": "0.05",
              "daily_pnl": "9.60"},
        [{"realized_pnl": "10", "closed_at": "2026-11-23T01:00:00"}],
        [{"unrealized_pnl": "-2"}], ["nothing"])
    assert text.splitlines() == [
        "DAILY SUMMARY 2026-11-23 (UTC)",
        "Closed today: 1 (1 won, 0 lost), realised 9.60 USDT (net of fees)",
        "Open now: 1, unrealised -2.00 USDT",
        "Equity 10,010.00 USDT · state ACTIVE",
        "Margin usage 5.0%",
        "(unavailable: nothing)",
    ]
    noon = dtm.datetime(2026, 11, 23, 21, 5, tzinfo=dtm.UTC)
    assert summary_due(noon, 21) and not summary_due(noon, 20) and not summary_due(noon, -1)


# --------------------------------------------------------------------------- service


class FakeOutbox:
    def __init__(self) -> None:
        self.items: list[tuple[str, str, str]] = []

    def append(self, level: str, text: str, signal_id: str = "") -> str:
        self.items.append((level, text, signal_id))
        return f"{len(self.items)}-0"


@pytest.fixture()
def service(secrets_env: dict[str, str]) -> Any:
    from nameko_services.notify.alerts import Alerts
    from nameko_services.notify.service import NotifyService

    outbox = FakeOutbox()
    svc = worker_factory(NotifyService, alerts=Alerts(outbox, AlertPolicy("normal"), MemoryLatch()))  # type: ignore[arg-type]
    svc.outbox = outbox
    return svc


def test_fill_event_becomes_an_alert_with_every_level(service: Any) -> None:
    service.on_trade_opened({
        "type": "trade_opened", "signal_id": "sig-1", "symbol": "BTCUSDT", "side": "LONG",
        "quantity": "0.010", "entry_price": "60000.0", "stop_loss": "58800.0",
        "take_profit": "61200.0", "liquidation_price": "57228.91", "margin": "30.00",
        "leverage": 20})
    ((level, text, sid),) = service.outbox.items
    assert (level, sid) == ("info", "sig-1")
    assert text == ("ENTRY FILLED BTCUSDT LONG 0.010 @ 60000.0 (20x isolated, margin 30.00 "
                    "USDT)\nSL 58800.0 | TP 61200.0 | liq 57228.91\nsignal sig-1")


def test_a_state_change_redelivered_is_one_alert(service: Any) -> None:
    change = {"type": "risk_alert", "level": "critical", "code": "STATE_CHANGED",
              "text": "Trading state ACTIVE -> HALTED: manual", "alert_id": "state:c1"}
    service.on_risk_alert(change)
    service.on_risk_alert(change)  # RabbitMQ redelivered it (or a second instance got it)
    service.on_risk_alert({**change, "alert_id": "state:c2"})  # a new change, same words
    service.on_risk_alert({"type": "risk_alert", "level": "warning", "code": "LIQUIDATION_NEAR",
                           "text": "ETHUSDT mark within 1.0% of liquidation", "symbol": "ETHUSDT"})
    assert [(lvl, txt) for lvl, txt, _ in service.outbox.items] == [
        ("critical", "[STATE_CHANGED] Trading state ACTIVE -> HALTED: manual"),
        ("critical", "[STATE_CHANGED] Trading state ACTIVE -> HALTED: manual"),
        ("warning", "[LIQUIDATION_NEAR] ETHUSDT mark within 1.0% of liquidation"),
    ]


def test_an_alert_whose_queueing_failed_is_not_taken_for_a_duplicate(
        secrets_env: dict[str, str]) -> None:
    from nameko_services.notify.alerts import Alerts

    class FlakyOutbox(FakeOutbox):
        fail = True

        def append(self, level: str, text: str, signal_id: str = "") -> str:
            if self.fail:
                self.fail = False
                raise ConnectionError("redis down")
            return super().append(level, text, signal_id)

    outbox = FlakyOutbox()
    alerts = Alerts(outbox, AlertPolicy("normal"), MemoryLatch())  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        alerts.send("critical", "halted", "risk", dedupe_key="risk:state:c1")

    assert alerts.send("critical", "halted", "risk", dedupe_key="risk:state:c1") == "1-0"
    assert alerts.send("critical", "halted", "risk", dedupe_key="risk:state:c1") is None


def test_accepted_signals_are_quiet_at_normal_verbosity(service: Any) -> None:
    service.on_signal_accepted({"signal_id": "a", "symbol": "ETHUSDT", "side": "LONG"})
    service.on_signal_rejected({"signal_id": "b", "symbol": "ETHUSDT",
                                "reasons": ["halted"]})
    assert [t for _, t, _ in service.outbox.items] == [
        "Signal rejected ETHUSDT: halted\nsignal b"]
