"""The whole flow, from a TradingView webhook to a protected position on the exchange."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from shared.names import TOPIC_PARTITIONS
from shared.records import Record
from tests.support.trading import wait_for

pytestmark = pytest.mark.e2e


def post(url: str, body: Any, headers: dict[str, str] | None = None,
         content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def alert(settings: Any, **over: Any) -> dict[str, Any]:
    body = {"secret": settings.security.webhook_secret.get_secret_value(),
            "ticker": "BINANCE:BTCUSDT.P", "action": "buy", "price": None, "confidence": 0.8,
            # a strategy of its own: earlier tests' closed trades are not its track record
            "strategy": f"e2e-{uuid.uuid4().hex[:8]}", "interval": "15",
            "id": f"e2e-{uuid.uuid4().hex}",
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


def stream_records(streams: Any, stream: str, signal_id: str) -> list[Record]:
    entries = streams.xrevrange(stream, count=2000)
    return [r for r in (Record.from_stream_fields(f) for _, f in entries)
            if r.signal_id == signal_id]


def kafka_records(settings: Any, topic: str, signal_id: str) -> list[dict[str, Any]]:
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                         "group.id": f"e2e-{uuid.uuid4().hex}", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                         for p in range(TOPIC_PARTITIONS[topic])])
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                if found:
                    break
                continue
            if msg.error():
                continue
            value = json.loads(msg.value())
            if value.get("signal_id") == signal_id:
                found.append(value)
        return found
    finally:
        consumer.close()


@pytest.fixture
def flat(exchange: Any, rpc: Any) -> Any:
    """No position before or after the test, whatever it leaves behind."""
    rpc.execute.close_all()
    yield
    rpc.execute.close_all()


def test_webhook_opens_20x_isolated_position_with_two_percent_brackets(
        settings, exchange, streams, rpc, flat):
    status, body = post(settings.services.url_of("brain") + "/webhook", alert(settings),
                        content_type="text/plain")

    assert status == 202 and body["status"] == "accepted"
    signal_id = body["signal_id"]
    position = wait_for(lambda: next((p for p in exchange.fetch_positions(["BTC/USDT:USDT"])
                                      if p["contracts"]), None))
    assert position["side"] == "long" and position["marginMode"] == "isolated"
    entry = Decimal(str(position["entryPrice"]))
    tick = Decimal(str(exchange.market("BTC/USDT:USDT")["precision"]["price"]))
    orders = wait_for(lambda: {o["info"]["orderType"]: o for o in exchange.fetch_open_orders(
        "BTC/USDT:USDT", params={"trigger": True})} or None)
    stop, take = orders["STOP_MARKET"], orders["TAKE_PROFIT_MARKET"]
    assert abs(Decimal(str(stop["triggerPrice"])) - entry * Decimal("0.98")) <= tick
    assert abs(Decimal(str(take["triggerPrice"])) - entry * Decimal("1.02")) <= tick
    assert stop["reduceOnly"] and take["reduceOnly"]
    assert stop["amount"] == take["amount"] == position["contracts"]
    leverage = exchange.fapiPrivatePostLeverage({"symbol": "BTCUSDT", "leverage": 20})
    assert int(leverage["leverage"]) == 20
    # every step is on the streams and the Kafka topics, carrying the signal id
    assert {"signal_accepted", "signal_scored"} <= {
        r.type for r in stream_records(streams, "signal:stream", signal_id)}
    assert wait_for(lambda: stream_records(streams, "risk:stream", signal_id))[0].data["approved"]
    trade_types = wait_for(lambda: {r.type for r in stream_records(
        streams, "trade:stream", signal_id)} >= {"entry_filled", "brackets_placed"} or None)
    assert trade_types
    assert {"signal_accepted", "signal_scored"} <= {
        r["type"] for r in kafka_records(settings, "phoenix95_signals", signal_id)}
    assert {r["type"] for r in kafka_records(settings, "risk_events", signal_id)} == {
        "risk_check"}
    assert {"entry_filled", "brackets_placed"} <= {
        r["type"] for r in kafka_records(settings, "trading_events", signal_id)}
    # and execute reports it with its protection
    [view] = [p for p in rpc.execute.positions() if p["symbol"] == "BTCUSDT"]
    assert view["signal_id"] == signal_id
    assert abs(Decimal(view["stop_loss"]) - Decimal(str(stop["triggerPrice"]))) < tick
    assert Decimal(view["liquidation_price"]) < Decimal(view["stop_loss"])


def test_same_alert_twice_trades_once(settings, exchange, streams, flat):
    body = alert(settings, ticker="ETHUSDT")
    url = settings.services.url_of("brain") + "/webhook"

    first_status, first = post(url, body)
    second_status, second = post(url, body)

    assert (first_status, second_status) == (202, 200)
    assert second == {"status": "duplicate", "signal_id": first["signal_id"]}
    # the signal's work is done once its brackets are placed; the duplicate was refused
    # at intake, so nothing else can still be on its way
    wait_for(lambda: {r.type for r in stream_records(streams, "trade:stream",
                                                     first["signal_id"])}
             >= {"entry_filled", "brackets_placed"})
    fills = [r for r in stream_records(streams, "trade:stream", first["signal_id"])
             if r.type == "entry_filled"]
    [position] = [p for p in exchange.fetch_positions(["ETH/USDT:USDT"]) if p["contracts"]]
    assert len(fills) == 1
    assert Decimal(str(position["contracts"])) == Decimal(fills[0].data["quantity"])
    accepted = [r for r in (Record.from_stream_fields(f)
                            for _, f in streams.xrevrange("signal:stream", count=2000))
                if r.type == "signal_accepted"
                and r.data.get("idempotency_key") == f"id:{body['id']}"]
    assert len(accepted) == 1


@pytest.mark.parametrize("mutate,status,needle,recorded", [
    # an unauthenticated request writes nothing at all (it could fill the streams)
    (lambda b: {**b, "secret": "wrong"}, 401, "secret", []),
    (lambda b: {k: v for k, v in b.items() if k != "action"}, 400, "action",
     ["signal_rejected"]),
    (lambda b: {**b, "ticker": "XRPUSDT"}, 422, "XRPUSDT", ["signal_rejected"]),
    (lambda b: {**b, "confidence": "high"}, 422, "confidence", ["signal_rejected"]),
])
def test_bad_input_gets_a_json_error_and_reaches_nothing(settings, streams, mutate, status,
                                                         needle, recorded):
    before = streams.xrevrange("signal:stream", count=1)
    body = mutate(alert(settings))

    code, answer = post(settings.services.url_of("brain") + "/webhook", body)

    assert code == status and needle in answer["error"]
    newer = streams.xrange("signal:stream", min=f"({before[0][0]}" if before else "-")
    assert [Record.from_stream_fields(f).type for _, f in newer] == recorded


def test_malformed_json_is_400(settings):
    code, answer = post(settings.services.url_of("brain") + "/webhook", b"{oops",
                        content_type="text/plain")

    assert code == 400 and "malformed JSON" in answer["error"]


def test_weak_signal_is_scored_and_rejected_with_reasons(settings, streams, exchange, flat):
    status, body = post(settings.services.url_of("brain") + "/webhook",
                        alert(settings, ticker="ADAUSDT", confidence=0.3))

    assert status == 202
    scored = wait_for(lambda: [r for r in stream_records(streams, "signal:stream",
                                                         body["signal_id"])
                               if r.type == "signal_scored"])
    assert scored[0].data["decision"] == "rejected"
    assert "final_confidence_below_execute_threshold" in scored[0].data["reasons"]
    assert not [p for p in exchange.fetch_positions(["ADA/USDT:USDT"]) if p["contracts"]]


def test_rpc_surface_works_as_from_nameko_shell(settings, rpc, streams):
    status = rpc.risk.status()
    analysis = rpc.brain.analyze({"ticker": "BTCUSDT", "action": "buy", "confidence": 0.8})
    queued = rpc.notify.alert("e2e hello", "warning")
    liq = rpc.risk.liquidation_price("BTCUSDT", "LONG", "60000", "0.010", 20)
    decision = rpc.risk.check({
        "signal_id": "rpc", "idempotency_key": "rpc", "symbol": "BTCUSDT", "side": "LONG",
        "quantity": "0.01", "reference_price": "60000", "leverage": 50, "stop_loss": "58800",
        "take_profit": "61200", "margin": "12"})

    assert status["state"] in ("ACTIVE", "REDUCING", "HALTED") and Decimal(status["equity"]) > 0
    assert analysis["symbol"] == "BTCUSDT" and 0 < analysis["phoenix_score"] <= 1
    assert queued["status"] == "queued"
    assert streams.xrange("notify:outbox", min=queued["id"], max=queued["id"])
    assert Decimal(liq).quantize(Decimal("0.01")) == Decimal("57228.92")
    assert not decision["approved"] and "leverage_exceeded" in decision["reasons"]
    assert isinstance(rpc.execute.positions(), list)


def test_internal_endpoints_need_the_api_key(settings, api_key):
    url = settings.services.url_of("risk") + "/status"

    assert get(url)[0] == 401
    code, body = get(url, {"X-API-Key": api_key})
    assert code == 200 and "state" in json.loads(body)


def test_every_service_exposes_parseable_prometheus_metrics(settings):
    from prometheus_client.parser import text_string_to_metric_families

    for service in ("brain", "risk", "execute", "notify"):
        code, text = get(settings.services.url_of(service) + "/metrics")
        names = {f.name for f in text_string_to_metric_families(text)}
        assert code == 200 and "phoenix95_process_peak_rss_bytes" in names


def test_dashboard_link_redirects_to_streamlit(settings):
    req = urllib.request.Request(settings.services.url_of("notify") + "/dashboard")
    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as err:
        opener.open(req, timeout=5)
    assert err.value.code == 302
    assert err.value.headers["Location"].endswith(f":{settings.services.dashboard_port}")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
