"""The paper exchange's WebSocket side through the REAL ccxt.pro client (and raw sockets).

An in-process exchange on a free port; ccxt.pro is pointed at it by URL only
(``make_pro_exchange(settings, base_url=..., ws_url=...)``), exactly as the feed will be.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any

import aiohttp
import ccxt
import ccxt.pro
import pytest

from nameko_services.paper_exchange import PaperExchange
from shared.exchange import make_exchange, make_pro_exchange
from shared.settings import Settings, load_settings

API_KEY = "paper-ws-key"
API_SECRET = "paper-ws-secret"
SYMBOL = "BTC/USDT:USDT"
pytestmark = pytest.mark.integration


def _settings(**paper: Any) -> Settings:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PHOENIX__SECURITY__WEBHOOK_SECRET", "test-webhook-secret")
        mp.setenv("PHOENIX__SECURITY__API_KEYS", '["k"]')
        mp.setenv("PHOENIX__MESSAGE_QUEUE__PASSWORD", "pw")
        mp.setenv("PHOENIX__EXCHANGE__API_KEY", API_KEY)
        mp.setenv("PHOENIX__EXCHANGE__API_SECRET", API_SECRET)
        mp.setenv("PHOENIX__EXCHANGE__MODE", "paper")
        return load_settings(paper_exchange={"tick_interval_ms": 100, **paper})


def _start(**paper: Any) -> PaperExchange:
    exchange = PaperExchange(_settings(**paper), host="127.0.0.1", port=0,
                             slippage=Decimal("0.0001"), state_path="")
    exchange.start()
    return exchange


@pytest.fixture(scope="module")
def paper() -> Iterator[PaperExchange]:
    exchange = _start()
    yield exchange
    exchange.stop()


def http(paper: PaperExchange, method: str, path: str, body: dict[str, Any] | None = None,
         key: str = API_KEY) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(paper.base_url + path, data=data, method=method,
                                 headers={"X-MBX-APIKEY": key})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            raw = resp.read()
            return json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode()
    except urllib.error.HTTPError as err:
        return json.loads(err.read())


def pin(paper: PaperExchange, price: float) -> None:
    http(paper, "POST", "/paper/price", {"symbol": "BTCUSDT", "price": price, "hold": True})


@pytest.fixture(autouse=True)
def fresh(paper: PaperExchange) -> None:
    http(paper, "POST", "/paper/reset")
    http(paper, "POST", "/paper/listenkey/expire")
    pin(paper, 60000)


class Tee(ccxt.pro.binanceusdm):  # type: ignore[misc]
    """ccxt.pro as the feed uses it, keeping every raw event (note §4.6)."""

    raw: list[dict[str, Any]]

    def handle_message(self, client: Any, message: Any) -> Any:
        if isinstance(message, dict) and "e" in message:
            self.raw.append(message)
        return super().handle_message(client, message)


def pro(paper: PaperExchange) -> Tee:
    client = make_pro_exchange(paper.settings, base_url=paper.base_url, ws_url=paper.ws_url,
                               cls=Tee)
    client.raw = []
    return client


async def until(check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def in_thread(fn: Callable[[], Any]) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn)


def run(paper: PaperExchange, body: Callable[[Tee], Awaitable[None]]) -> None:
    async def main() -> None:
        client = pro(paper)
        try:
            await client.load_markets()
            await body(client)
        finally:
            await client.close()
    asyncio.run(main())


def keep_watching(watch: Callable[[], Awaitable[Any]], sink: list[Any]) -> asyncio.Task[None]:
    async def loop() -> None:
        while True:
            try:
                sink.append(await watch())
            except ccxt.NetworkError:
                await asyncio.sleep(0.05)
    return asyncio.ensure_future(loop())


def private_sockets(paper: PaperExchange) -> list[Any]:
    return [c for c in list(paper.hub.conns) if c.route == "private" and c.keys]


# --- market streams ---------------------------------------------------------------------
def test_market_watches_resolve_with_binance_payloads(paper: PaperExchange) -> None:
    async def body(ex: Tee) -> None:
        mark = await ex.watch_mark_price(SYMBOL)
        marks = await ex.watch_mark_prices([SYMBOL, "ETH/USDT:USDT"])
        candles = await ex.watch_ohlcv(SYMBOL, "1m")
        quotes = await ex.watch_bids_asks([SYMBOL])
        ticker = await ex.watch_ticker(SYMBOL)
        full = await ex.watch_ticker(SYMBOL, {"name": "ticker"})
        trades = await ex.watch_trades(SYMBOL)
        aggregated = await ex.watch_trades(SYMBOL, params={"name": "aggTrade"})
        rest = await in_thread(lambda: make_exchange(paper.settings, base_url=paper.base_url)
                               .fetch_ohlcv(SYMBOL, "1m", limit=3))

        assert mark["markPrice"] == 60000 and mark["info"]["e"] == "markPriceUpdate"
        assert set(marks) <= {SYMBOL, "ETH/USDT:USDT"} and marks
        # the price is held, so the streamed candle and REST agree even if a minute turned
        assert candles[-1][:5] == next(c[:5] for c in rest if c[0] == candles[-1][0])
        assert candles[-1][4] == 60000
        assert quotes[SYMBOL]["bid"] == 59994 and quotes[SYMBOL]["ask"] == 60006  # 1 bp
        assert ticker["last"] == 60000 and ticker["info"]["e"] == "24hrMiniTicker"
        assert full["last"] == 60000 and full["info"]["e"] == "24hrTicker"
        assert trades[-1]["price"] == 60000 and trades[-1]["amount"] > 0
        assert aggregated[-1]["price"] == 60000  # trade and aggTrade share ccxt's cache
        assert {m["e"] for m in ex.raw} >= {"trade", "aggTrade", "bookTicker", "kline"}
        kline = next(m for m in ex.raw if m["e"] == "kline")
        assert kline["k"]["s"] == "BTCUSDT" and kline["k"]["i"] == "1m"
        assert kline["k"]["x"] is False

    run(paper, body)


def test_taker_fill_matches_the_book_ticker(paper: PaperExchange) -> None:
    async def body(ex: Tee) -> None:
        quotes = await ex.watch_bids_asks([SYMBOL])
        rest = make_exchange(paper.settings, base_url=paper.base_url)
        order = await in_thread(lambda: rest.create_order(SYMBOL, "market", "buy", 0.01))
        assert order["average"] == quotes[SYMBOL]["ask"]

    run(paper, body)


# --- user data --------------------------------------------------------------------------
def test_private_watches_see_orders_algo_updates_trades_positions_balance(
        paper: PaperExchange) -> None:
    async def body(ex: Tee) -> None:
        orders: list[Any] = []
        trades: list[Any] = []
        positions: list[Any] = []
        balances: list[Any] = []
        tasks = [keep_watching(ex.watch_orders, orders),
                 keep_watching(ex.watch_my_trades, trades),
                 keep_watching(ex.watch_positions, positions),
                 keep_watching(ex.watch_balance, balances)]
        await until(lambda: private_sockets(paper), "the private socket")
        rest = make_exchange(paper.settings, base_url=paper.base_url)

        entry = await in_thread(lambda: rest.create_order(SYMBOL, "market", "buy", 0.01))
        sl = await in_thread(lambda: rest.create_order(
            SYMBOL, "STOP_MARKET", "sell", 0.01, None,
            {"stopPrice": 58800, "reduceOnly": True, "clientOrderId": "ws-sl"}))
        tp = await in_thread(lambda: rest.create_order(
            SYMBOL, "TAKE_PROFIT_MARKET", "sell", 0.01, None,
            {"triggerPrice": 61200, "reduceOnly": True, "clientOrderId": "ws-tp"}))
        await in_thread(lambda: pin(paper, 61250))  # the take-profit fires

        def seen(order_id: str, status: str) -> bool:
            return any(o["id"] == order_id and o["status"] == status
                       for batch in orders for o in batch)

        await until(lambda: seen(tp["id"], "closed"), "the take-profit FINISHED")
        assert seen(entry["id"], "closed") and seen(sl["id"], "open")
        await until(lambda: len({t["id"] for b in trades for t in b}) >= 2, "two trades")
        await until(lambda: any(p["contracts"] == 0 or p["contracts"] is None
                                for b in positions for p in b), "the flat position")
        await until(lambda: balances, "a balance update")
        for task in tasks:
            task.cancel()

        assert any(p["contracts"] == 0.01 and p["side"] == "long"
                   for b in positions for p in b)
        assert balances[-1]["USDT"]["total"] == pytest.approx(
            10000 + 0.01 * (61250 * 0.9999 - 60006) - 0.0005 * 0.01 * (60006 + 61243.9),
            abs=0.01)
        flow = [(m["e"], m["o"].get("X") if "o" in m else m["a"]["m"])
                for m in ex.raw if m["e"] in ("ALGO_UPDATE", "ORDER_TRADE_UPDATE",
                                              "ACCOUNT_UPDATE")]
        assert flow[:3] == [("ORDER_TRADE_UPDATE", "NEW"), ("ORDER_TRADE_UPDATE", "FILLED"),
                            ("ACCOUNT_UPDATE", "ORDER")]
        assert flow[3:5] == [("ALGO_UPDATE", "NEW"), ("ALGO_UPDATE", "NEW")]
        assert flow[5:] == [("ALGO_UPDATE", "TRIGGERING"), ("ALGO_UPDATE", "TRIGGERED"),
                            ("ORDER_TRADE_UPDATE", "NEW"), ("ORDER_TRADE_UPDATE", "FILLED"),
                            ("ACCOUNT_UPDATE", "ORDER"), ("ALGO_UPDATE", "FINISHED")]
        triggered = next(m["o"] for m in ex.raw
                         if m["e"] == "ALGO_UPDATE" and m["o"]["X"] == "TRIGGERED")
        child = [m["o"] for m in ex.raw if m["e"] == "ORDER_TRADE_UPDATE"][-1]
        assert triggered["ai"] == str(child["i"]) and child["x"] == "TRADE"

    run(paper, body)


def test_listen_key_rest_rules(paper: PaperExchange) -> None:
    first = http(paper, "POST", "/fapi/v1/listenKey")["listenKey"]
    assert http(paper, "POST", "/fapi/v1/listenKey") == {"listenKey": first}
    assert http(paper, "PUT", "/fapi/v1/listenKey") == {"listenKey": first}
    assert http(paper, "PUT", "/fapi/v1/listenKey?listenKey=nope") == {
        "code": -1125, "msg": "This listenKey does not exist."}
    assert http(paper, "POST", "/fapi/v1/listenKey", key="wrong")["code"] == -2015
    assert http(paper, "DELETE", "/fapi/v1/listenKey") == {}
    assert http(paper, "PUT", "/fapi/v1/listenKey")["code"] == -1125
    assert http(paper, "POST", "/fapi/v1/listenKey")["listenKey"] != first


def test_ccxt_keepalive_put_and_expiry_event(paper: PaperExchange) -> None:
    async def body(ex: Tee) -> None:
        orders: list[Any] = []
        task = keep_watching(ex.watch_orders, orders)
        (sock,) = await until(lambda: private_sockets(paper), "the private socket")
        key = sock.keys[0]
        assert (await ex.fapiPrivatePutListenKey())["listenKey"] == key

        http(paper, "POST", "/paper/listenkey/expire")

        expired = await until(lambda: [m for m in ex.raw if m["e"] == "listenKeyExpired"],
                              "listenKeyExpired")
        assert expired[0]["listenKey"] == key and isinstance(expired[0]["E"], int)
        assert sock in paper.hub.conns and not sock.ws.closed and sock.keys == []
        with pytest.raises(ccxt.AuthenticationError):
            await ex.fapiPrivatePutListenKey()
        task.cancel()

    run(paper, body)


def test_listen_key_expires_after_its_ttl() -> None:
    paper = _start(listen_key_ttl_s=0.5)
    try:
        key = http(paper, "POST", "/fapi/v1/listenKey")["listenKey"]

        async def body() -> dict[str, Any]:
            async with aiohttp.ClientSession() as session, session.ws_connect(
                    f"ws://127.0.0.1:{paper.port}/private/ws?listenKey={key}") as ws:
                return json.loads((await ws.receive(timeout=10)).data)

        assert asyncio.run(body()) == {"e": "listenKeyExpired", "E": pytest.approx(
            time.time() * 1000, abs=10_000), "listenKey": key}
        assert http(paper, "PUT", "/fapi/v1/listenKey")["code"] == -1125
    finally:
        paper.stop()


# --- connection faults, protocol, metrics, latency -----------------------------------------
def test_dropped_sockets_reconnect_and_resubscribe_on_the_next_watch(
        paper: PaperExchange) -> None:
    async def body(ex: Tee) -> None:
        await ex.watch_mark_price(SYMBOL)
        pending = asyncio.ensure_future(ex.watch_mark_price(SYMBOL))
        await asyncio.sleep(0)

        dropped = await in_thread(lambda: http(paper, "POST", "/paper/ws/drop"))

        assert dropped["dropped"] >= 1
        with pytest.raises(ccxt.NetworkError):
            await pending
        again = await ex.watch_mark_price(SYMBOL)
        assert again["markPrice"] == 60000

    run(paper, body)


def test_subscription_protocol_on_a_raw_socket(paper: PaperExchange) -> None:
    async def body() -> list[Any]:
        url = f"ws://127.0.0.1:{paper.port}/market/stream?streams=btcusdt@markPrice@1s"
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            for request in ({"method": "SUBSCRIBE", "params": ["btcusdt@nope"], "id": 1},
                            {"method": "SUBSCRIBE", "params": ["ethusdt@kline_1m"], "id": 2,
                             "use1sFreq": True},
                            {"method": "LIST_SUBSCRIPTIONS", "id": 3},
                            {"method": "GET_PROPERTY", "params": ["combined"], "id": 4},
                            {"method": "PING", "id": 5}, {"params": [], "id": 6}):
                await ws.send_json(request)
            answers: list[Any] = []
            while len(answers) < 6:
                msg = json.loads((await ws.receive(timeout=10)).data)
                if "id" in msg:
                    answers.append(msg)
            answers.append(await until_stream(ws))
            return answers

    async def until_stream(ws: aiohttp.ClientWebSocketResponse) -> Any:
        while True:
            msg = json.loads((await ws.receive(timeout=10)).data)
            if msg.get("stream") == "btcusdt@markPrice@1s":
                return msg

    answers = asyncio.run(body())

    assert answers[0] == {"error": {"code": 2, "msg": "Invalid request: invalid stream"},
                          "id": 1}
    assert answers[1] == {"result": None, "id": 2}
    assert answers[2] == {"result": ["btcusdt@markPrice@1s", "ethusdt@kline_1m"], "id": 3}
    assert answers[3] == {"result": True, "id": 4}
    assert answers[4]["error"]["code"] == 2 and "unknown variant `PING`" in answers[4][
        "error"]["msg"]
    assert "missing field `method`" in answers[5]["error"]["msg"]
    assert answers[6]["data"]["e"] == "markPriceUpdate" and answers[6]["data"]["s"] == "BTCUSDT"


def _counter(text: str, line_prefix: str) -> float:
    rows = [r for r in text.splitlines() if r.startswith(line_prefix)]
    return float(rows[0].rsplit(" ", 1)[1]) if rows else 0.0


def test_metrics_count_requests_by_route_and_ws_events(paper: PaperExchange) -> None:
    orders = 'paper_exchange_requests_total{method="POST",path="/fapi/v1/order"}'
    before = _counter(http(paper, "GET", "/metrics"), orders)
    rest = make_exchange(paper.settings, base_url=paper.base_url)

    rest.create_order(SYMBOL, "market", "buy", 0.01, params={"clientOrderId": "m-1"})

    text = http(paper, "GET", "/metrics")
    assert _counter(text, orders) == before + 1
    assert "?" not in "".join(r for r in text.splitlines() if "requests_total{" in r)
    assert "paper_exchange_ws_connections" in text
    assert "paper_exchange_ws_events_total" in text


def test_latency_delays_rest_answers_and_websocket_events() -> None:
    paper = _start(latency_ms=50)

    async def event_age_ms() -> float:
        url = f"ws://127.0.0.1:{paper.port}/market/ws/btcusdt@markPrice@1s"
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            event = json.loads((await ws.receive(timeout=10)).data)
            return time.time() * 1000 - event["E"]

    try:
        started = time.perf_counter()
        http(paper, "GET", "/fapi/v1/time")
        elapsed = time.perf_counter() - started
        age = asyncio.run(event_age_ms())
    finally:
        paper.stop()
    assert elapsed >= 0.05
    assert age >= 49  # E is stamped when the event is made, in whole milliseconds
