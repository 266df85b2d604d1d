"""HTTP layer without a socket: signing, timing window, routing, JSON error bodies."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest
from werkzeug.test import Client

from nameko_services.paper_exchange.api import PaperApi
from nameko_services.paper_exchange.engine import MatchingEngine
from nameko_services.paper_exchange.market import Market

KEY, SECRET = "key-1", "secret-1"


@pytest.fixture(scope="module")
def market() -> Market:
    return Market(seed=95, volatility_annual=0.6, tick_interval_ms=500)


@pytest.fixture
def client(market: Market) -> Client:
    market.pin("BTCUSDT", Decimal(60000), hold=True)
    engine = MatchingEngine(market, Decimal(10000), Decimal("0.0005"))
    return Client(PaperApi(engine, market, KEY, SECRET))


def signed(params: dict[str, Any], secret: str = SECRET, ts_offset: int = 0) -> str:
    # Same construction as ccxt: timestamp first, insertion order, signature last.
    query = urlencode({"timestamp": int(time.time() * 1000) + ts_offset, **params,
                       "recvWindow": 10000})
    sig = hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()
    return f"{query}&signature={sig}"


def call(client: Client, method: str, path: str, query: str = "", body: str = "",
         key: str | None = KEY) -> tuple[int, Any]:
    headers = {"X-MBX-APIKEY": key} if key else {}
    resp = client.open(path, method=method, query_string=query, data=body, headers=headers,
                       content_type="application/x-www-form-urlencoded")
    return resp.status_code, json.loads(resp.get_data(as_text=True))


def test_signed_get_and_post(client: Client) -> None:
    status, body = call(client, "GET", "/fapi/v3/account", signed({}))
    assert status == 200 and body["assets"][0]["walletBalance"] == "10000.00000000"
    status, body = call(client, "POST", "/fapi/v1/leverage",
                        body=signed({"symbol": "BTCUSDT", "leverage": 10}))
    assert status == 200 and body["leverage"] == 10


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        (dict(key=None), 401, -2015),
        (dict(key="other"), 401, -2015),
        (dict(secret="nope"), 401, -1022),
        (dict(ts_offset=1500), 400, -1021),
        (dict(ts_offset=-11_000), 400, -1021),
    ],
)
def test_auth_failures(client: Client, kwargs: dict[str, Any], status: int, code: int) -> None:
    key = kwargs.pop("key", KEY)
    query = signed({}, **kwargs)
    got_status, body = call(client, "GET", "/fapi/v3/account", query, key=key)
    assert (got_status, body["code"]) == (status, code)


def test_tampered_or_unsigned(client: Client) -> None:
    query = signed({"symbol": "BTCUSDT"})
    _, body = call(client, "GET", "/fapi/v3/positionRisk", query.replace("BTC", "ETH", 1))
    assert body["code"] == -1022
    _, body = call(client, "GET", "/fapi/v3/positionRisk", query + "&symbol=ETHUSDT")
    assert body["code"] == -1022
    _, body = call(client, "GET", "/fapi/v3/positionRisk", "timestamp=1")
    assert body["code"] == -1102


def test_public_routing_and_errors(client: Client) -> None:
    assert call(client, "GET", "/health", key=None) == (200, {"status": "ok"})
    status, body = call(client, "GET", "/fapi/v1/time", key=None)
    assert status == 200 and abs(body["serverTime"] - time.time() * 1000) < 5000
    assert call(client, "GET", "/nope", key=None)[0] == 404
    assert call(client, "PUT", "/fapi/v1/time", key=None)[0] == 405
    status, body = call(client, "GET", "/fapi/v1/klines", "symbol=BTCUSDT&interval=7m")
    assert (status, body["code"]) == (400, -1120)
    status, body = call(client, "GET", "/fapi/v1/ticker/24hr", "symbol=XRPUSDT")
    assert (status, body["code"]) == (400, -1121)
    status, body = call(client, "GET", "/fapi/v1/premiumIndex", "symbol=BTCUSDT")
    assert body["markPrice"] == "60000.00"  # tickSize "0.10" has two places
    status, body = call(client, "GET", "/fapi/v1/leverageBracket", signed({"symbol": "BTCUSDT"}))
    assert body["brackets"][1]["cum"] == 50.0


def test_order_endpoint_rules(client: Client) -> None:
    stop = {"symbol": "BTCUSDT", "side": "SELL", "type": "STOP_MARKET", "quantity": "0.01",
            "stopPrice": "58800"}
    assert call(client, "POST", "/fapi/v1/order", body=signed(stop))[1]["code"] == -4120
    limit = dict(stop, type="LIMIT", price="59000")
    assert call(client, "POST", "/fapi/v1/order", body=signed(limit))[1]["code"] == -1116
    order = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01",
             "newClientOrderId": "abc", "newOrderRespType": "RESULT"}
    status, body = call(client, "POST", "/fapi/v1/order", body=signed(order))
    assert status == 200 and body["status"] == "FILLED" and body["avgPrice"] == "60000.00"
    assert call(client, "POST", "/fapi/v1/order", body=signed(order))[1]["code"] == -4116
    cancel = {"symbol": "BTCUSDT", "origClientOrderId": "abc"}
    assert call(client, "DELETE", "/fapi/v1/order", signed(cancel))[1]["code"] == -2011
    dual = {"dualSidePosition": "true"}
    assert call(client, "POST", "/fapi/v1/positionSide/dual", body=signed(dual))[1][
        "code"] == -1130
    status, body = call(client, "GET", "/fapi/v1/positionSide/dual", signed({}))
    assert body == {"dualSidePosition": False}


def test_admin_price_pin_runs_triggers(client: Client) -> None:
    order = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01"}
    call(client, "POST", "/fapi/v1/order", body=signed(order))
    algo = {"symbol": "BTCUSDT", "side": "SELL", "type": "TAKE_PROFIT_MARKET",
            "quantity": "0.01", "triggerPrice": "61200", "reduceOnly": "true",
            "algoType": "CONDITIONAL", "clientAlgoId": "tp1"}
    status, body = call(client, "POST", "/fapi/v1/algoOrder", body=signed(algo))
    assert status == 200 and body["algoStatus"] == "NEW"
    resp = client.post("/paper/price", data=json.dumps({"symbol": "BTCUSDT", "price": 61300}),
                       headers={"X-MBX-APIKEY": KEY})
    assert resp.status_code == 200 and json.loads(resp.get_data())["hold"] is True
    _, body = call(client, "GET", "/fapi/v1/algoOrder", signed({"clientAlgoId": "tp1"}))
    assert body["algoStatus"] == "FINISHED" and body["actualPrice"] == "61300.00"
    _, state = call(client, "GET", "/paper/state")
    assert state["positions"] == [] and state["openAlgoOrders"] == []
    bad = client.post("/paper/price", data="{}", headers={"X-MBX-APIKEY": KEY})
    assert bad.status_code == 400 and json.loads(bad.get_data())["code"] == -1102
