"""Brain's HTTP intake through worker_factory: the bus, the gate and telemetry are fakes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from nameko_services.brain.dependencies import Admission
from shared.settings import load_settings
from tests.support.brain_fakes import FakeTelemetry
from tests.support.bus import FakeBus


class FakeGate:
    """The Redis gate's contract in memory; ``spent`` counts each client's rate budget."""

    def __init__(self, wait: int = 0, state: str = "ACTIVE"):
        self.claims: dict[str, str] = {}
        self.wait = wait
        self.state = state
        self.spent: dict[str, int] = {}

    def trading_state(self):
        return self.state

    def allow(self, client):
        self.spent[client] = self.spent.get(client, 0) + 1
        return self.wait

    def admit(self, client, key, signal_id, *, entry, now=None):
        if self.allow(client):
            return Admission("rate_limited", wait=self.wait)
        if entry and self.state != "ACTIVE":
            return Admission("halted", self.state)
        return self.claim(key, signal_id)

    def claim(self, key, signal_id):
        if key in self.claims:
            earlier = self.claims[key]
            if earlier.startswith("pending:"):
                return Admission("in_flight", earlier[8:], wait=30)
            return Admission("duplicate", earlier)
        self.claims[key] = "pending:" + signal_id
        return Admission("ok")

    def confirm(self, key, signal_id):
        self.claims[key] = signal_id

    def release(self, key, signal_id):
        if self.claims.get(key) in (signal_id, "pending:" + signal_id):
            del self.claims[key]


def _request(body, content_type="application/json", remote_addr="127.0.0.1",
             headers=None) -> Request:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    env = EnvironBuilder(method="POST", path="/webhook", data=data, headers=headers,
                         content_type=content_type,
                         environ_base={"REMOTE_ADDR": remote_addr}).get_environ()
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
            "confidence": 0.8, "id": "alert-123",
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    body.update(over)
    return body


def test_valid_text_plain_alert_is_queued_durably_and_answered_202(brain, settings):
    response = brain.webhook(_request(json.dumps(_alert(settings)), "text/plain"))

    assert response.status_code == 202
    payload = json.loads(response.get_data())
    assert payload["status"] == "accepted"
    [(exchange, key, message)] = brain.bus.wired
    assert (exchange, key) == ("trading.signals", "signal.process")
    assert message["signal_id"] == payload["signal_id"] and message["symbol"] == "BTCUSDT"
    assert brain.telemetry.records[-1][0] == "signal:stream"


def test_repeat_of_the_same_alert_is_200_duplicate_and_not_queued_again(brain, settings):
    first = json.loads(brain.webhook(_request(_alert(settings))).get_data())

    response = brain.webhook(_request(_alert(settings)))

    assert response.status_code == 200
    answer = json.loads(response.get_data())
    assert (answer["status"], answer["signal_id"], answer["reason"]) == (
        "duplicate", first["signal_id"], "duplicate")
    assert "strategy and symbol within 24 h" in answer["detail"]
    assert len(brain.bus.wired) == 1


@pytest.mark.parametrize("other", [{"strategy": "breakout"}, {"ticker": "ETHUSDT"}])
def test_the_same_alert_id_in_another_strategy_or_symbol_is_another_signal(brain, settings,
                                                                          other):
    # execute scopes its client ids by strategy|symbol|id: brain must not drop as a
    # duplicate what execute would trade as a separate position
    first = brain.webhook(_request(_alert(settings, strategy="trend")))
    second = brain.webhook(_request(_alert(settings, **{"strategy": "trend", **other})))

    assert (first.status_code, second.status_code) == (202, 202)
    [(_, _, one), (_, _, two)] = brain.bus.wired
    assert one["idempotency_key"] == two["idempotency_key"] == "id:alert-123"
    assert one["signal_id"] != two["signal_id"]


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
    assert brain.bus.wired == []


def test_wrong_secret_is_401_spends_no_rate_budget_and_writes_no_record(brain, settings):
    response = brain.webhook(_request(_alert(settings, secret="nope")))

    assert response.status_code == 401
    assert json.loads(response.get_data())["reason"] == "unauthorized"
    assert brain.bus.wired == []
    assert brain.gate.spent == {}
    assert brain.telemetry.records == []


@pytest.mark.parametrize("body", ["{not json", '{"ticker": "BTCUSDT"}', '{"secret": 7}'])
def test_unauthenticated_garbage_writes_no_record(brain, body):
    response = brain.webhook(_request(body, "text/plain"))

    assert response.status_code in (400, 401)
    assert brain.gate.spent == {} and brain.telemetry.records == []


def test_a_flood_of_unauthenticated_requests_does_not_lock_out_the_real_sender(settings):
    from nameko.testing.services import worker_factory

    from nameko_services.brain.service import BrainService

    class OneLeft(FakeGate):  # the real sender may send one more alert this minute
        def allow(self, client):
            super().allow(client)
            return 0 if self.spent[client] <= 1 else 30

    brain = worker_factory(BrainService, config=settings, gate=OneLeft(), bus=FakeBus(),
                           telemetry=FakeTelemetry())
    for _ in range(50):
        brain.webhook(_request(_alert(settings, secret="guess")))

    response = brain.webhook(_request(_alert(settings)))

    assert response.status_code == 202


def test_lone_surrogate_secret_is_401_not_500(brain):
    response = brain.webhook(_request('{"secret": "\\ud800", "ticker": "BTCUSDT", '
                                      '"action": "buy"}', "text/plain"))

    assert response.status_code == 401


@pytest.mark.parametrize("field", ["id", "strategy", "ticker"])
def test_lone_surrogate_in_a_text_field_is_422_not_500(brain, settings, field):
    body = json.dumps(_alert(settings, **{field: "BTCUSDT<lone>"})).replace("<lone>", "\\udc80")

    response = brain.webhook(_request(body, "text/plain"))

    assert response.status_code == 422
    assert json.loads(response.get_data())["field"] == field
    assert brain.bus.wired == []


def test_huge_price_is_422_not_queued_to_overflow_later(brain, settings):
    response = brain.webhook(_request(_alert(settings, price="1e9999999")))

    assert response.status_code == 422
    assert json.loads(response.get_data())["field"] == "price"
    assert brain.bus.wired == []


def test_invalid_authenticated_alerts_spend_the_budget_and_stop_recording_past_it(settings):
    from nameko.testing.services import worker_factory

    from nameko_services.brain.service import BrainService

    brain = worker_factory(BrainService, config=settings, gate=FakeGate(wait=9),
                           bus=FakeBus(), telemetry=FakeTelemetry())

    response = brain.webhook(_request(_alert(settings, ticker="XRPUSDT")))

    assert response.status_code == 429
    assert brain.gate.spent == {"127.0.0.1": 1}
    assert brain.telemetry.records == []


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
    assert brain.telemetry.records == []  # a 429 flood leaves no records behind


def _stamp(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("delta", [timedelta(minutes=-6), timedelta(hours=-3),
                                   timedelta(minutes=5)])
def test_stale_or_future_alert_is_422_stale_and_not_queued(brain, settings, delta):
    response = brain.webhook(_request(_alert(settings, time=_stamp(delta))))

    assert response.status_code == 422
    payload = json.loads(response.get_data())
    assert (payload["reason"], payload["field"]) == ("stale", "time")
    assert brain.bus.wired == []
    assert brain.telemetry.records[-1][1].data["reason"] == "stale"


def test_alert_a_little_ahead_of_our_clock_is_accepted(brain, settings):
    response = brain.webhook(_request(_alert(settings, time=_stamp(timedelta(seconds=10)))))

    assert response.status_code == 202


def _brain_with(settings, monkeypatch, **env):
    from nameko.testing.services import worker_factory

    from nameko_services.brain.service import BrainService
    from shared.settings import get_settings

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    configured = load_settings()
    return configured, worker_factory(BrainService, config=configured, gate=FakeGate(),
                                      bus=FakeBus(), telemetry=FakeTelemetry())


TV = "52.89.214.238"


def test_allowlist_refuses_other_sources_with_403(settings, monkeypatch):
    cfg, brain = _brain_with(settings, monkeypatch,
                             PHOENIX__SECURITY__SOURCE_ALLOWLIST_ENABLED="true")

    refused = brain.webhook(_request(_alert(cfg), remote_addr="203.0.113.9"))
    accepted = brain.webhook(_request(_alert(cfg), remote_addr=TV))

    assert refused.status_code == 403
    assert json.loads(refused.get_data())["reason"] == "forbidden_source"
    assert accepted.status_code == 202


def test_forwarded_for_is_ignored_from_an_untrusted_peer(settings, monkeypatch):
    cfg, brain = _brain_with(settings, monkeypatch,
                             PHOENIX__SECURITY__SOURCE_ALLOWLIST_ENABLED="true")

    spoofed = brain.webhook(_request(_alert(cfg), remote_addr="203.0.113.9",
                                     headers={"X-Forwarded-For": TV}))

    assert spoofed.status_code == 403


def test_forwarded_for_is_believed_from_a_trusted_proxy(settings, monkeypatch):
    cfg, brain = _brain_with(settings, monkeypatch,
                             PHOENIX__SECURITY__SOURCE_ALLOWLIST_ENABLED="true",
                             PHOENIX__SECURITY__TRUSTED_PROXIES='["10.0.0.2"]')

    via_proxy = brain.webhook(_request(_alert(cfg), remote_addr="10.0.0.2",
                                       headers={"X-Forwarded-For": f"198.51.100.1, {TV}"}))
    prepended = brain.webhook(_request(_alert(cfg, id="other"), remote_addr="10.0.0.2",
                                       headers={"X-Forwarded-For": f"{TV}, 198.51.100.1"}))

    assert via_proxy.status_code == 202
    assert prepended.status_code == 403  # the right-most untrusted hop is the client


# --- property: no body of any shape makes the webhook fail ---

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
FIELD_VALUES = {
    "ticker": JSON | st.sampled_from(["BTCUSDT", "BINANCE:ETHUSDT.P", "XRPUSDT", ""]),
    "action": JSON | st.sampled_from(["buy", "SELL", "close", "hodl"]),
    "price": JSON | st.floats(allow_nan=True, allow_infinity=True),
    "confidence": JSON | st.floats(-2, 2),
    "time": JSON | st.integers(-10**20, 10**20) | st.sampled_from(
        ["2026-01-01T00:00:00Z", "99999999999999999999", "yesterday", ""]),
    "id": JSON, "strategy": JSON, "interval": JSON,
}


@st.composite
def alert_shaped(draw):
    keys = draw(st.sets(st.sampled_from(sorted(FIELD_VALUES))))
    body = {k: draw(FIELD_VALUES[k]) for k in keys}
    if draw(st.booleans()):
        body["secret"] = "unit-test-webhook-secret"
    return body


BODIES = (
    st.binary(max_size=300)
    | JSON.map(lambda v: json.dumps(v).encode())
    | alert_shaped().map(lambda v: json.dumps(v).encode())
    | st.integers(1, 5000).map(lambda n: b"[" * n)
)


@hyp_settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES, content_type=st.sampled_from(["application/json", "text/plain", ""]))
def test_no_body_of_any_shape_gets_a_5xx_and_every_rejection_names_its_reason(
        brain, body, content_type):
    response = brain.webhook(_request(body, content_type))

    assert response.status_code < 500
    payload = json.loads(response.get_data())
    if response.status_code >= 400:
        assert payload["reason"] and payload["error"]


@pytest.mark.parametrize("state", ["HALTED", "REDUCING"])
def test_entries_are_refused_fast_while_risk_is_not_active(settings, state):
    from nameko.testing.services import worker_factory

    from nameko_services.brain.service import BrainService

    brain = worker_factory(BrainService, config=settings, gate=FakeGate(state=state),
                           bus=FakeBus(), telemetry=FakeTelemetry())

    response = brain.webhook(_request(_alert(settings)))

    assert response.status_code == 423
    assert json.loads(response.get_data())["reason"] == state.lower()
    assert brain.bus.wired == []
    assert brain.telemetry.records[-1][1].data["reason"] == state.lower()


def test_closing_alert_still_goes_through_while_halted(settings):
    from nameko.testing.services import worker_factory

    from nameko_services.brain.service import BrainService

    brain = worker_factory(BrainService, config=settings, gate=FakeGate(state="HALTED"),
                           bus=FakeBus(), telemetry=FakeTelemetry())

    response = brain.webhook(_request(_alert(settings, action="close")))

    assert response.status_code == 202


def test_brain_dedups_on_the_scope_execute_derives_its_client_ids_from(brain, settings):
    from nameko_services.execute.engine import intent_ids
    from shared.exchange import client_order_id
    from shared.models import TradeIntent

    brain.webhook(_request(_alert(settings, strategy="trend")))
    [(_, _, wire)] = brain.bus.wired
    claimed = next(iter(brain.gate.claims))
    intent = TradeIntent(signal_id=wire["signal_id"], idempotency_key=wire["idempotency_key"],
                         symbol=wire["symbol"], side="LONG", quantity=1, reference_price=1,
                         leverage=1, stop_loss=None, take_profit=None, margin=1,
                         strategy=wire["strategy"])

    assert claimed == "trend|BTCUSDT|id:alert-123"
    assert intent_ids(intent)["entry"] == client_order_id("p95e", claimed)


def test_a_retry_while_the_first_is_not_queued_yet_is_503_in_flight_not_duplicate(brain,
                                                                                  settings):
    first = brain.webhook(_request(_alert(settings, id="in-flight-1")))
    # as if the brain that claimed the alert had died before publishing it
    [scoped] = list(brain.gate.claims)
    brain.gate.claims[scoped] = "pending:sig-dead"

    retry = brain.webhook(_request(_alert(settings, id="in-flight-1")))

    assert first.status_code == 202
    assert retry.status_code == 503 and retry.headers["Retry-After"] == "30"
    assert json.loads(retry.get_data())["reason"] == "in_flight"
    assert len(brain.bus.wired) == 1  # nothing queued twice


def test_a_queued_signal_confirms_its_claim_for_the_whole_window(brain, settings):
    response = brain.webhook(_request(_alert(settings, id="confirmed-1")))

    [(scoped, value)] = list(brain.gate.claims.items())
    assert response.status_code == 202
    assert value == json.loads(response.get_data())["signal_id"]  # no longer pending
