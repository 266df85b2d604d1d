"""Every Binance rejection the paper exchange reproduces, through real ccxt.

The client is ``shared.exchange.make_exchange`` (ccxt ``binanceusdm`` with the USD-M error
table applied, as ccxt does for Binance's own hosts), so each case asserts the exact
exception class a Binance user would catch, and the Binance code in its message.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import ccxt
import pytest

from nameko_services.paper_exchange import PaperExchange
from nameko_services.paper_exchange.limiter import WINDOW_MS
from shared.exchange import make_exchange
from shared.settings import Settings, load_settings
from tests.conftest import TEST_SECRETS

pytestmark = pytest.mark.integration
SYMBOL = "BTC/USDT:USDT"
Action = Callable[[ccxt.binanceusdm], Any]


def _settings(**paper: Any) -> Settings:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in TEST_SECRETS.items():
            mp.setenv(key, value)
        return load_settings(paper_exchange={"tick_interval_ms": 100, **paper})


@pytest.fixture(scope="module")
def paper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PaperExchange]:
    exchange = PaperExchange(_settings(), host="127.0.0.1", port=0, slippage=Decimal(0),
                             state_path=tmp_path_factory.mktemp("errors") / "paper.db")
    exchange.start()
    yield exchange
    exchange.stop()


def admin(paper: PaperExchange, path: str, body: dict[str, Any] | None = None) -> None:
    req = urllib.request.Request(
        paper.base_url + path, data=json.dumps(body or {}).encode(), method="POST",
        headers={"X-MBX-APIKEY": paper.settings.exchange.api_key.get_secret_value()})
    urllib.request.urlopen(req, timeout=5).close()


@pytest.fixture
def ex(paper: PaperExchange) -> ccxt.binanceusdm:
    admin(paper, "/paper/reset")
    admin(paper, "/paper/price", {"symbol": "BTCUSDT", "price": 60000, "hold": True})
    client = make_exchange(paper.settings, base_url=paper.base_url)
    client.load_markets()
    return client


@dataclass(frozen=True)
class Case:
    code: int
    error: type[Exception]
    action: Action
    setup: Action | None = None


def _wrong_secret(ex: ccxt.binanceusdm) -> Any:
    ex.secret = "not-the-secret"
    return ex.fetch_balance()


def _stale_clock(ex: ccxt.binanceusdm) -> Any:
    ex.options["timeDifference"] = 20_000  # nonce 20 s old; ccxt's recvWindow is 10 s
    return ex.fetch_balance()


CASES = {
    # ccxt.create_order truncates the amount to stepSize client-side (0.0101 -> 0.01), so
    # a too-precise quantity can only reach the exchange through the raw endpoint.
    "precision": Case(-1111, ccxt.BadRequest, lambda ex: ex.fapiPrivatePostOrder(
        {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.0101"})),
    "min_notional": Case(-4164, ccxt.InvalidOrder,
                         lambda ex: ex.create_order(SYMBOL, "market", "buy", 0.001)),
    "insufficient_margin": Case(-2019, ccxt.InsufficientFunds,
                                lambda ex: ex.create_order(SYMBOL, "market", "buy", 5)),
    "trigger_fires_at_once": Case(-2021, ccxt.OrderImmediatelyFillable, lambda ex:
                                  ex.create_order(SYMBOL, "STOP_MARKET", "sell", 0.01, None,
                                                  {"stopPrice": 60100, "reduceOnly": True})),
    "reduce_only_rejected": Case(-2022, ccxt.InvalidOrder, lambda ex: ex.create_order(
        SYMBOL, "market", "sell", 0.01, params={"reduceOnly": True})),
    "duplicate_client_order_id": Case(
        -4116, ccxt.InvalidOrder,
        lambda ex: ex.create_order(SYMBOL, "market", "buy", 0.01,
                                   params={"clientOrderId": "dup-1"}),
        setup=lambda ex: ex.create_order(SYMBOL, "market", "buy", 0.01,
                                         params={"clientOrderId": "dup-1"})),
    "bad_signature": Case(-1022, ccxt.AuthenticationError, _wrong_secret),
    "stale_timestamp": Case(-1021, ccxt.InvalidNonce, _stale_clock),
    "cancel_unknown_order": Case(-2011, ccxt.OrderNotFound,
                                 lambda ex: ex.cancel_order("987654", SYMBOL)),
    "cancel_unknown_algo_order": Case(-2011, ccxt.OrderNotFound, lambda ex: ex.cancel_order(
        "987654", SYMBOL, params={"trigger": True})),
    "fetch_unknown_order": Case(-2013, ccxt.OrderNotFound,
                                lambda ex: ex.fetch_order("987654", SYMBOL)),
    "margin_type_unchanged": Case(-4046, ccxt.MarginModeAlreadySet,
                                  lambda ex: ex.set_margin_mode("isolated", SYMBOL),
                                  setup=lambda ex: ex.set_margin_mode("isolated", SYMBOL)),
    # ccxt itself routes stop types to /algoOrder; an outdated client would not.
    "stop_type_on_order_endpoint": Case(-4120, ccxt.InvalidOrder, lambda ex:
                                        ex.fapiPrivatePostOrder(
                                            {"symbol": "BTCUSDT", "side": "SELL",
                                             "type": "STOP_MARKET", "quantity": "0.01",
                                             "stopPrice": "58800"})),
}


@pytest.mark.parametrize("name", list(CASES))
def test_binance_error_code_raises_the_ccxt_exception_a_binance_user_sees(
    ex: ccxt.binanceusdm, name: str
) -> None:
    case = CASES[name]
    if case.setup is not None:
        case.setup(ex)

    with pytest.raises(ccxt.BaseError) as raised:
        case.action(ex)

    assert type(raised.value) is case.error
    assert f'"code":{case.code},' in str(raised.value).replace(" ", "")


def test_ccxt_rounds_the_amount_that_the_raw_endpoint_rejects(ex: ccxt.binanceusdm) -> None:
    order = ex.create_order(SYMBOL, "market", "buy", 0.0109)
    assert order["amount"] == 0.01  # truncated to stepSize before it was sent


def test_request_weight_limit_answers_429_with_retry_after() -> None:
    paper = PaperExchange(_settings(max_requests_per_minute=10), host="127.0.0.1", port=0,
                          state_path="")
    paper.start()
    try:
        assert paper.api.limiter is not None and paper.api.limiter.limit == 10
        minute = 1_795_473_300_000 - 1_795_473_300_000 % WINDOW_MS
        now = [minute + 45_500]  # 14.5 s before the window turns
        paper.api.limiter.clock = lambda: now[0]
        client = make_exchange(paper.settings, base_url=paper.base_url)
        client.load_markets()  # exchangeInfo: weight 1
        client.fetch_balance()  # v3/account: weight 5
        for _ in range(4):
            client.fetch_ticker(SYMBOL)  # weight 1 each: 10 used, the limit exactly

        with pytest.raises(ccxt.DDoSProtection) as limited:
            client.fetch_ticker(SYMBOL)
        with pytest.raises(urllib.error.HTTPError) as raw:
            urllib.request.urlopen(paper.base_url + "/fapi/v1/ticker/24hr?symbol=BTCUSDT",
                                   timeout=5)

        # ccxt's binance handler turns any 418/429 into DDoSProtection before the code table.
        assert type(limited.value) is ccxt.DDoSProtection and "-1003" in str(limited.value)
        assert raw.value.code == 429 and raw.value.headers["Retry-After"] == "15"
        assert json.loads(raw.value.read())["code"] == -1003
        assert raw.value.headers["X-MBX-USED-WEIGHT-1M"] == "12"
        now[0] = minute + WINDOW_MS  # the next minute: a fresh budget
        assert client.fetch_ticker(SYMBOL)["symbol"] == SYMBOL
    finally:
        paper.stop()
