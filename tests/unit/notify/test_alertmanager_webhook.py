"""notify's ``POST /alertmanager``: Alertmanager's webhook (payload version 4, Bearer auth)
becomes one outbox alert per Alertmanager alert."""

from __future__ import annotations

import json
from typing import Any

import pytest
from nameko.testing.services import worker_factory
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from nameko_services.notify.engine import AlertPolicy
from tests.support.notify_fakes import MemoryLatch

# Alertmanager's documented webhook body (prometheus.io/docs/alerting/latest/configuration/
# #webhook_config), as Alertmanager 0.25 sends it for one firing and one resolved alert.
PAYLOAD: dict[str, Any] = {
    "version": "4",
    "groupKey": '{}/{severity="critical"}:{alertname="Phoenix95ServiceDown"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "phoenix95-notify-critical",
    "groupLabels": {"alertname": "Phoenix95ServiceDown"},
    "commonLabels": {"alertname": "Phoenix95ServiceDown", "severity": "critical"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager:9093",
    "alerts": [
        {"status": "firing",
         "labels": {"alertname": "Phoenix95ServiceDown", "severity": "critical",
                    "job": "phoenix95-brain", "instance": "10.0.0.2:8100"},
         "annotations": {"summary": "phoenix95-brain replica 10.0.0.2:8100 is down",
                         "description": "Prometheus could not scrape 10.0.0.2:8100 for 1 minute."},
         "startsAt": "2026-11-30T06:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
         "generatorURL": "http://prometheus:9090/graph", "fingerprint": "a1b2c3d4e5f60718"},
        {"status": "resolved",
         "labels": {"alertname": "Phoenix95ServiceDown", "severity": "critical",
                    "job": "phoenix95-risk", "instance": "10.0.0.4:8101"},
         "annotations": {"summary": "phoenix95-risk replica 10.0.0.4:8101 is down"},
         "startsAt": "2026-11-30T05:50:00Z", "endsAt": "2026-11-30T05:58:00Z",
         "generatorURL": "http://prometheus:9090/graph", "fingerprint": "0f1e2d3c4b5a6978"},
    ],
}


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
    from shared.settings import get_settings

    outbox = FakeOutbox()
    svc = worker_factory(NotifyService, config=get_settings(),
                         alerts=Alerts(outbox, AlertPolicy("normal"), MemoryLatch()))  # type: ignore[arg-type]
    svc.outbox = outbox
    return svc


def post(service: Any, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = Request(EnvironBuilder(method="POST", path="/alertmanager", data=raw,
                                     headers={"Content-Type": "application/json",
                                              **headers}).get_environ())
    response = service.alertmanager(request)
    return response.status_code, json.loads(response.get_data())


BEARER = {"Authorization": "Bearer unit-test-api-key-long-enough-24"}


def test_each_alert_of_the_group_is_queued_with_its_level_and_text(service: Any) -> None:
    status, body = post(service, PAYLOAD, BEARER)

    assert status == 202
    assert body == {"status": "queued", "alerts": 2, "queued": 2}
    (level1, text1, _), (level2, text2, _) = service.outbox.items
    assert level1 == "critical"
    assert text1.startswith(
        "[FIRING] Phoenix95ServiceDown (job=phoenix95-brain, instance=10.0.0.2:8100)")
    assert "phoenix95-brain replica 10.0.0.2:8100 is down" in text1
    assert "for 1 minute" in text1
    assert level2 == "info" and text2.startswith("[RESOLVED] Phoenix95ServiceDown")


def test_the_same_webhook_retried_by_alertmanager_is_queued_once(service: Any) -> None:
    post(service, PAYLOAD, BEARER)

    status, body = post(service, PAYLOAD, BEARER)

    assert status == 202 and body["queued"] == 0
    assert len(service.outbox.items) == 2


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic dW5pdC10ZXN0"},
    {"Authorization": "unit-test-api-key-long-enough-24"}])
def test_a_webhook_without_the_bearer_key_is_refused(service: Any,
                                                      headers: dict[str, str]) -> None:
    status, body = post(service, PAYLOAD, headers)

    assert status == 401
    assert service.outbox.items == []


def test_the_api_key_header_is_accepted_too(service: Any) -> None:
    status, _ = post(service, PAYLOAD, {"X-API-Key": "unit-test-api-key-long-enough-24"})

    assert status == 202


@pytest.mark.parametrize("body", [
    {**PAYLOAD, "version": "3"}, {**PAYLOAD, "alerts": [{"labels": {}}]},
    {"message": "the /alert body is not a webhook"}, b"not json"])
def test_a_body_that_is_not_an_alertmanager_webhook_is_refused(service: Any, body: Any) -> None:
    status, payload = post(service, body, BEARER)

    assert status in (400, 422)
    assert payload["error"]
    assert service.outbox.items == []


def test_a_warning_and_an_unknown_severity_are_warnings(service: Any) -> None:
    alert = {**PAYLOAD["alerts"][0], "fingerprint": "ff",
             "labels": {"alertname": "Phoenix95ConsumerLagHigh", "severity": "warning"}}
    other = {**alert, "fingerprint": "ee", "labels": {"alertname": "X"}}

    post(service, {**PAYLOAD, "alerts": [alert, other]}, BEARER)

    assert [level for level, _, _ in service.outbox.items] == ["warning", "warning"]
