"""POST /paper/faults: requests fail as Binance's do, seen through real ccxt."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import ccxt
import pytest

from nameko_services.paper_exchange import PaperExchange
from shared.exchange import make_exchange
from shared.settings import Settings, load_settings
from tests.conftest import TEST_SECRETS

pytestmark = pytest.mark.integration


def _settings() -> Settings:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in TEST_SECRETS.items():
            mp.setenv(key, value)
        # a short client timeout: the "timeout" fault holds a request past it
        return load_settings(paper_exchange={"tick_interval_ms": 100},
                             exchange={"timeout_ms": 500})


@pytest.fixture(scope="module")
def paper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PaperExchange]:
    exchange = PaperExchange(_settings(), host="127.0.0.1", port=0, slippage=Decimal(0),
                             state_path=tmp_path_factory.mktemp("faults") / "paper.db")
    exchange.start()
    yield exchange
    exchange.stop()


@pytest.fixture
def ex(paper: PaperExchange) -> Iterator[ccxt.binanceusdm]:
    client = make_exchange(paper.settings, base_url=paper.base_url)
    client.load_markets()
    yield client
    admin(paper, "DELETE", "/paper/faults")


def admin(paper: PaperExchange, method: str, path: str, body: Any = None,
          key: str | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        paper.base_url + path, data=data, method=method,
        headers={"X-MBX-APIKEY": key or paper.settings.exchange.api_key.get_secret_value(),
                 "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def always(paper: PaperExchange, kind: str) -> None:
    status, view = admin(paper, "POST", "/paper/faults",
                         {"error_rate": 1.0, "errors": [kind], "seconds": 30})
    assert status == 200 and view["active"] is True


@pytest.mark.parametrize("kind,error,code", [
    ("500", ccxt.ExchangeNotAvailable, None),
    ("503", ccxt.ExchangeNotAvailable, None),
    ("429", ccxt.DDoSProtection, -1003),
    ("-1001", ccxt.OperationFailed, -1001),
])
def test_an_active_fault_fails_requests_as_binance_does(paper, ex, kind, error, code):
    always(paper, kind)

    with pytest.raises(error) as raised:
        ex.fetch_balance()

    if code is not None:
        assert str(code) in str(raised.value)


def test_a_timeout_fault_holds_past_the_client_timeout_and_places_nothing(paper, ex):
    admin(paper, "POST", "/paper/reset")
    always(paper, "timeout")

    with pytest.raises(ccxt.RequestTimeout):
        ex.create_order("BTC/USDT:USDT", "market", "buy", 0.01)

    admin(paper, "DELETE", "/paper/faults")
    _, orders = admin(paper, "GET", "/paper/orders")
    assert orders["orders"] == []


def test_a_processed_timeout_places_the_order_but_the_client_never_hears(paper, ex):
    admin(paper, "POST", "/paper/reset")
    always(paper, "timeout-processed")

    with pytest.raises(ccxt.RequestTimeout):
        ex.create_order("BTC/USDT:USDT", "market", "buy", 0.01,
                        params={"newClientOrderId": "chaos-lost-answer"})

    admin(paper, "DELETE", "/paper/faults")
    assert ex.fetch_order(None, "BTC/USDT:USDT",
                          params={"origClientOrderId": "chaos-lost-answer"})["filled"] == 0.01


def test_admin_and_health_work_during_a_fault_and_delete_clears_it(paper, ex):
    always(paper, "503")

    with urllib.request.urlopen(paper.base_url + "/health", timeout=5) as resp:
        assert resp.status == 200
    assert admin(paper, "GET", "/paper/state")[0] == 200
    status, view = admin(paper, "GET", "/paper/faults")
    assert status == 200 and view["errors"] == ["503"] and view["injected"]["503"] == 0

    admin(paper, "DELETE", "/paper/faults")

    assert ex.fetch_balance()["USDT"]["total"] is not None
    assert admin(paper, "GET", "/paper/faults")[1]["active"] is False


def test_faults_need_the_api_key_and_a_valid_body(paper):
    assert admin(paper, "POST", "/paper/faults", {"error_rate": 0.3, "errors": ["500"],
                                                  "seconds": 20}, key="wrong")[0] == 401
    status, body = admin(paper, "POST", "/paper/faults",
                         {"error_rate": 0.3, "errors": ["418"], "seconds": 20})
    assert status == 400 and body["code"] == -1130
    assert admin(paper, "GET", "/paper/faults")[1]["active"] is False


def test_orders_lists_every_accepted_client_id(paper, ex):
    admin(paper, "POST", "/paper/reset")
    ex.create_order("BTC/USDT:USDT", "market", "buy", 0.01, params={"newClientOrderId": "chaos-1"})

    _, listed = admin(paper, "GET", "/paper/orders")

    assert [o["clientOrderId"] for o in listed["orders"]] == ["chaos-1"]
