"""The paper exchange through the same ccxt client the rest of Phoenix 95 uses.

A real HTTP server runs in-process on a free port.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import ccxt
import pytest

from nameko_services.paper_exchange import PaperExchange
from shared.exchange import make_exchange
from shared.settings import Settings, load_settings

API_KEY = "paper-test-key"
API_SECRET = "paper-test-secret"
SYMBOL = "BTC/USDT:USDT"
pytestmark = pytest.mark.integration


def _settings() -> Settings:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PHOENIX__SECURITY__WEBHOOK_SECRET", "test-webhook-secret")
        mp.setenv("PHOENIX__SECURITY__API_KEYS", '["k"]')
        mp.setenv("PHOENIX__MESSAGE_QUEUE__PASSWORD", "pw")
        mp.setenv("PHOENIX__EXCHANGE__API_KEY", API_KEY)
        mp.setenv("PHOENIX__EXCHANGE__API_SECRET", API_SECRET)
        mp.setenv("PHOENIX__EXCHANGE__MODE", "paper")
        return load_settings(
            paper_exchange={"tick_interval_ms": 100, "port": 8110},
        )


@pytest.fixture(scope="module")
def paper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PaperExchange]:
    exchange = PaperExchange(_settings(), host="127.0.0.1", port=0, slippage=Decimal(0),
                             state_path=tmp_path_factory.mktemp("paper") / "state.db")
    exchange.start()
    yield exchange
    exchange.stop()


@pytest.fixture(scope="module")
def ex(paper: PaperExchange) -> ccxt.binanceusdm:
    client = make_exchange(paper.settings, base_url=paper.base_url)
    client.load_markets()
    return client


def admin(paper: PaperExchange, method: str, path: str, body: dict[str, Any] | None = None,
          key: str = API_KEY) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(paper.base_url + path, data=data, method=method,
                                 headers={"X-MBX-APIKEY": key,
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def pin(paper: PaperExchange, price: float, symbol: str = "BTCUSDT", hold: bool = True) -> None:
    admin(paper, "POST", "/paper/price", {"symbol": symbol, "price": price, "hold": hold})


@pytest.fixture(autouse=True)
def fresh_account(paper: PaperExchange) -> None:
    admin(paper, "POST", "/paper/reset")
    pin(paper, 60000)


def test_health_and_admin_needs_key(paper: PaperExchange) -> None:
    with urllib.request.urlopen(paper.base_url + "/health", timeout=5) as resp:
        assert json.loads(resp.read()) == {"status": "ok"}
    with pytest.raises(urllib.error.HTTPError) as err:
        admin(paper, "GET", "/paper/state", key="wrong")
    assert err.value.code == 401
    assert json.loads(err.value.read())["code"] == -2015


def test_markets_ticker_ohlcv(ex: ccxt.binanceusdm) -> None:
    markets = ex.markets
    assert {"BTC/USDT:USDT", "ETH/USDT:USDT", "BNB/USDT:USDT", "ADA/USDT:USDT",
            "DOGE/USDT:USDT"} <= set(markets)
    btc = markets[SYMBOL]
    assert btc["linear"] and btc["swap"] and btc["settle"] == "USDT"
    assert btc["limits"]["cost"]["min"] == 100
    assert btc["precision"]["amount"] == 0.001 and btc["precision"]["price"] == 0.1
    ticker = ex.fetch_ticker(SYMBOL)
    assert ticker["last"] == 60000
    candles = ex.fetch_ohlcv(SYMBOL, "1m", limit=100)
    assert len(candles) == 100
    assert all(c[2] >= max(c[1], c[4]) and c[3] <= min(c[1], c[4]) for c in candles)
    assert [b[0] - a[0] for a, b in zip(candles, candles[1:], strict=False)] == [60_000] * 99
    hourly = ex.fetch_ohlcv(SYMBOL, "1h", limit=24)
    assert len(hourly) == 24 and hourly[-1][0] % 3_600_000 == 0
    since = candles[10][0]
    assert ex.fetch_ohlcv(SYMBOL, "1m", since=since, limit=5)[0][0] == since
    assert ex.fetch_mark_price(SYMBOL)["markPrice"] == 60000


def test_balance_leverage_margin_mode(ex: ccxt.binanceusdm) -> None:
    balance = ex.fetch_balance()
    assert balance["USDT"]["free"] == 10000 and balance["USDT"]["total"] == 10000
    assert ex.set_leverage(20, SYMBOL)["leverage"] == 20
    with pytest.raises(ccxt.BadRequest):
        ex.set_leverage(126, SYMBOL)
    ex.set_margin_mode("isolated", "ETH/USDT:USDT")
    with pytest.raises(ccxt.MarginModeAlreadySet):
        ex.set_margin_mode("isolated", "ETH/USDT:USDT")


def test_market_order_position_and_liquidation_price(ex: ccxt.binanceusdm) -> None:
    ex.set_leverage(20, SYMBOL)
    order = ex.create_order(SYMBOL, "market", "buy", 0.01, params={"clientOrderId": "px-open-1"})
    assert order["status"] == "closed" and order["clientOrderId"] == "px-open-1"
    assert order["average"] == 60000 and order["filled"] == 0.01
    fetched = ex.fetch_order(order["id"], SYMBOL)
    assert fetched["id"] == order["id"] and fetched["status"] == "closed"
    by_client = ex.fetch_order(None, SYMBOL, params={"origClientOrderId": "px-open-1"})
    assert by_client["id"] == order["id"]
    (pos,) = ex.fetch_positions([SYMBOL])
    assert pos["side"] == "long" and pos["contracts"] == 0.01 and pos["entryPrice"] == 60000
    assert pos["marginMode"] == "isolated"
    assert pos["liquidationPrice"] == pytest.approx(57228.92)
    assert pos["info"]["isolatedWallet"].startswith("30.")
    fee = 600 * 0.0005
    balance = ex.fetch_balance()
    assert balance["USDT"]["free"] == pytest.approx(10000 - 30 - fee)
    assert balance["USDT"]["used"] == pytest.approx(30)


def test_stop_and_take_profit_algo_orders_and_tp_trigger(
    ex: ccxt.binanceusdm, paper: PaperExchange
) -> None:
    ex.create_order(SYMBOL, "market", "buy", 0.01)
    sl = ex.create_order(SYMBOL, "STOP_MARKET", "sell", 0.01, None,
                         {"stopPrice": 58800, "reduceOnly": True, "clientOrderId": "px-sl-1"})
    tp = ex.create_order(SYMBOL, "TAKE_PROFIT_MARKET", "sell", 0.01, None,
                         {"triggerPrice": 61200, "reduceOnly": True, "clientOrderId": "px-tp-1"})
    assert sl["status"] == "open" and sl["clientOrderId"] == "px-sl-1"
    assert tp["triggerPrice"] == 61200
    open_ids = {o["clientOrderId"] for o in ex.fetch_open_orders(SYMBOL, params={"trigger": True})}
    assert open_ids == {"px-sl-1", "px-tp-1"}
    assert ex.fetch_open_orders(SYMBOL) == []

    pin(paper, 61250)  # crosses the take-profit
    assert ex.fetch_positions([SYMBOL]) == []
    done = ex.fetch_order(tp["id"], SYMBOL, params={"trigger": True})
    assert done["status"] == "closed" and done["info"]["algoStatus"] == "FINISHED"
    trades = ex.fetch_my_trades(SYMBOL)
    assert len(trades) == 2
    close = trades[-1]
    assert close["side"] == "sell" and close["price"] == 61250
    assert float(close["info"]["realizedPnl"]) == pytest.approx(12.5)
    fees = 600 * 0.0005 + 612.5 * 0.0005
    assert ex.fetch_balance()["USDT"]["total"] == pytest.approx(10000 + 12.5 - fees)
    # Binance leaves the other leg alive; with no position it expires when it fires.
    remaining = ex.fetch_open_orders(SYMBOL, params={"trigger": True})
    assert [o["clientOrderId"] for o in remaining] == ["px-sl-1"]
    pin(paper, 58700)
    assert ex.fetch_order(sl["id"], SYMBOL, params={"trigger": True})["status"] == "expired"


def test_cancel_algo_order(ex: ccxt.binanceusdm) -> None:
    ex.create_order(SYMBOL, "market", "sell", 0.01)
    sl = ex.create_order(SYMBOL, "market", "buy", 0.01, None,
                         {"stopLossPrice": 61200, "closePosition": True})
    ex.cancel_order(sl["id"], SYMBOL, params={"trigger": True})
    assert ex.fetch_open_orders(SYMBOL, params={"trigger": True}) == []
    with pytest.raises(ccxt.OrderNotFound):
        ex.cancel_order(sl["id"], SYMBOL, params={"trigger": True})


def test_liquidation_via_pinned_price(ex: ccxt.binanceusdm, paper: PaperExchange) -> None:
    ex.create_order(SYMBOL, "market", "buy", 0.01)
    pin(paper, 57200)
    assert ex.fetch_positions([SYMBOL]) == []
    last = ex.fetch_my_trades(SYMBOL)[-1]
    assert last["price"] == pytest.approx(57228.92, abs=0.01)
    fee = 600 * 0.0005
    assert ex.fetch_balance()["USDT"]["total"] == pytest.approx(10000 - 30 - fee)


def test_errors_map_to_ccxt_exceptions(ex: ccxt.binanceusdm, paper: PaperExchange) -> None:
    with pytest.raises(ccxt.InsufficientFunds):
        ex.create_order(SYMBOL, "market", "buy", 5)  # 300k notional, 15k margin at 20x
    with pytest.raises(ccxt.InvalidOrder):  # -4164 MIN_NOTIONAL
        ex.create_order(SYMBOL, "market", "buy", 0.001)
    with pytest.raises(ccxt.InvalidOrder):  # -2022 reduce-only with no position
        ex.create_order(SYMBOL, "market", "sell", 0.01, params={"reduceOnly": True})
    with pytest.raises(ccxt.OrderImmediatelyFillable):
        ex.create_order(SYMBOL, "STOP_MARKET", "sell", 0.01, None,
                        {"stopPrice": 60100, "reduceOnly": True})
    ex.create_order(SYMBOL, "market", "buy", 0.01, params={"clientOrderId": "px-dup"})
    with pytest.raises(ccxt.InvalidOrder, match="-4116"):
        ex.create_order(SYMBOL, "market", "buy", 0.01, params={"clientOrderId": "px-dup"})
    with pytest.raises(ccxt.OrderNotFound):
        ex.fetch_order("999999", SYMBOL)


def test_stop_type_on_order_endpoint_is_rejected(ex: ccxt.binanceusdm) -> None:
    # ccxt routes stops to /algoOrder, so hit /fapi/v1/order the way an old client would.
    with pytest.raises(ccxt.InvalidOrder, match="-4120"):
        ex.fapiPrivatePostOrder({"symbol": "BTCUSDT", "side": "SELL", "type": "STOP_MARKET",
                                 "quantity": "0.01", "stopPrice": "58800"})


def test_bad_signature_is_authentication_error(paper: PaperExchange) -> None:
    client = make_exchange(paper.settings, base_url=paper.base_url)
    client.secret = "not-the-secret"
    with pytest.raises(ccxt.AuthenticationError):
        client.fetch_balance()
    client = make_exchange(paper.settings, base_url=paper.base_url)
    client.apiKey = "not-the-key"
    with pytest.raises(ccxt.AuthenticationError):
        client.fetch_balance()


def test_stale_timestamp_is_invalid_nonce(paper: PaperExchange) -> None:
    client = make_exchange(paper.settings, base_url=paper.base_url)
    client.options["timeDifference"] = 20_000  # nonce 20 s in the past, window 10 s
    with pytest.raises(ccxt.InvalidNonce):
        client.fetch_balance()


def test_state_endpoint(ex: ccxt.binanceusdm, paper: PaperExchange) -> None:
    ex.create_order(SYMBOL, "market", "buy", 0.01)
    ex.create_order(SYMBOL, "STOP_MARKET", "sell", 0.01, None,
                    {"stopPrice": 58800, "reduceOnly": True})
    state = admin(paper, "GET", "/paper/state")
    assert state["positions"][0]["symbol"] == "BTCUSDT"
    assert len(state["openAlgoOrders"]) == 1
    assert "BTCUSDT" in state["held"]


def test_symbol_config_reads_back_leverage_and_margin_type(ex: ccxt.binanceusdm) -> None:
    ex.set_leverage(15, SYMBOL)
    ex.set_margin_mode("isolated", SYMBOL)

    (row,) = ex.fapiPrivateGetSymbolConfig({"symbol": "BTCUSDT"})

    assert (row["symbol"], int(row["leverage"]), row["marginType"]) == ("BTCUSDT", 15,
                                                                         "ISOLATED")
    assert {r["symbol"] for r in ex.fapiPrivateGetSymbolConfig()} >= {"BTCUSDT", "ETHUSDT"}


def test_force_orders_list_the_liquidation(ex: ccxt.binanceusdm, paper: PaperExchange) -> None:
    since = int(time.time() * 1000) - 1000
    ex.create_order(SYMBOL, "market", "buy", 0.01)
    assert ex.fapiPrivateGetForceOrders({"symbol": "BTCUSDT", "startTime": since}) == []

    pin(paper, 57200)

    (row,) = ex.fapiPrivateGetForceOrders({"symbol": "BTCUSDT", "startTime": since})
    assert row["clientOrderId"].startswith("autoclose-") and row["side"] == "SELL"
    assert row["status"] == "FILLED" and float(row["executedQty"]) == 0.01
    assert ex.fapiPrivateGetForceOrders({"symbol": "BTCUSDT", "autoCloseType": "ADL"}) == []
