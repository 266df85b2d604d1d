"""Brain's HTTP intake through worker_factory: the bus, the gate and telemetry are fakes."""

from __future__ import annotations

import json

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from shared.nameko_deps import BusError
from shared.settings import load_settings


class FakeGate:
    def __init__(self, wait: int = 0):
        self.claims: dict[str, str] = {}
        self.wait = wait

    def allow(self, client):
        return self.wait

    def claim(self, key, signal_id):
        if key in self.claims:
            return self.claims[key]
        self.claims[key] = signal_id
        return None

    def release(self, key, signal_id):
        if self.claims.get(key) == signal_id:
            del self.claims[key]


class FakeBus:
    def __init__(self, fail: bool = False):
        self.published: list[tuple[str, str, dict]] = []
        self.fail = fail

    def publish(self, exchange, key, message, declare=None, headers=None):
        if self.fail:
            raise BusError("broker down")
        self.published.append((exchange, key, message.wire()))


class FakeTelemetry:
    def __init__(self):
        self.records = []

    def emit(self, stream, record):
        self.records.append((stream, record))

    def health(self):
        return {}


def _request(body, content_type="application/json") -> Request:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    env = EnvironBuilder(method="POST", path="/webhook", data=data,
                         content_type=content_type).get_environ()
    return Request(env)


@pytest.fixture
def settings(secrets_env):
    return load_settings()


@pytest.fixture
def brain(settings):
    from nameko.testing.services import worker_factory

    from nameko_services.brain.service import BrainService

    return worker_factory(BrainService, config=settings, gate=FakeGate(), bus=FakeBus(),
                          telemetry=FakeTelemetry())


def _alert(settings, **over):
    body = {"secret": settings.security.webhook_secret.get_secret_value(),
            "ticker": "BINANCE:BTCUSDT.P", "action": "buy", "price": 60000.5,
            "confidence": 0.8, "id": "alert-123"}
    body.update(over)
    return body


def test_valid_text_plain_alert_is_queued_durably_and_answered_202(brain, settings):
    response = brain.webhook(_request(json.dumps(_alert(settings)), "text/plain"))

    assert response.status_code == 202
    payload = json.loads(response.get_data())
    assert payload["status"] == "accepted"
    [(exchange, key, message)] = brain.bus.published
    assert (exchange, key) == ("trading.signals", "signal.process")
    assert message["signal_id"] == payload["signal_id"] and message["symbol"] == "BTCUSDT"
    assert brain.telemetry.records[-1][0] == "signal:stream"


def test_repeat_of_the_same_alert_is_200_duplicate_and_not_queued_again(brain, settings):
    first = json.loads(brain.webhook(_request(_alert(settings))).get_data())

    response = brain.webhook(_request(_alert(settings)))

    assert response.status_code == 200
    assert json.loads(response.get_data()) == {"status": "duplicate",
                                               "signal_id": first["signal_id"]}
    assert len(brain.bus.published) == 1


@pytest.mark.parametrize("body,status,needle", [
    ("{not json", 400, "malformed JSON"),
    ("[1, 2]", 400, "JSON object"),
    ("", 400, "empty body"),
    ("x" * 9000, 413, "larger than"),
])
def test_malformed_bodies_get_a_json_error_and_reach_nothing(brain, body, status, needle):
    response = brain.webhook(_request(body, "text/plain"))

    assert response.status_code == status
    assert needle in json.loads(response.get_data())["error"]
    assert brain.bus.published == []


def test_wrong_secret_is_401_and_recorded_as_a_rejection(brain, settings):
    response = brain.webhook(_request(_alert(settings, secret="nope")))

    assert response.status_code == 401
    assert brain.bus.published == []
    stream, record = brain.telemetry.records[-1]
    assert (stream, record.type, record.data["reason"]) == ("signal:stream", "signal_rejected",
                                                            "unauthorized")


def test_unknown_symbol_is_422(brain, settings):
    response = brain.webhook(_request(_alert(settings, ticker="XRPUSDT")))

    assert response.status_code == 422
    assert json.loads(response.get_data())["field"] == "ticker"


def test_broker_down_is_503_and_releases_the_idempotency_claim(settings):
    from nameko.testing.services import worker_factory

    from nameko_services.brain.service import BrainService

    brain = worker_factory(BrainService, config=settings, gate=FakeGate(),
                           bus=FakeBus(fail=True), telemetry=FakeTelemetry())

    response = brain.webhook(_request(_alert(settings)))

    assert response.status_code == 503
    assert brain.gate.claims == {}  # TradingView's retry will be accepted


def test_over_the_rate_limit_is_429_with_retry_after(settings):
    from nameko.testing.services import worker_factory

    from nameko_services.brain.service import BrainService

    brain = worker_factory(BrainService, config=settings, gate=FakeGate(wait=17),
                           bus=FakeBus(), telemetry=FakeTelemetry())

    response = brain.webhook(_request(_alert(settings)))

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "17"
