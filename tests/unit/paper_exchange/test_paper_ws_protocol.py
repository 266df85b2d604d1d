"""listenKey lifetime, WebSocket URL routing and the live-subscription protocol, no sockets."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from nameko_services.paper_exchange.listenkeys import ListenKeys
from nameko_services.paper_exchange.metrics import Latency, Metrics
from nameko_services.paper_exchange.models import ApiError
from nameko_services.paper_exchange.streams import parse_stream
from nameko_services.paper_exchange.webapp import ws_target
from nameko_services.paper_exchange.wsconn import MAX_BACKLOG, Connection


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_post_returns_the_active_key_and_extends_it() -> None:
    clock = Clock()
    keys = ListenKeys(60.0, clock)
    key = keys.create()
    clock.now += 50

    assert keys.create() == key
    clock.now += 50
    assert keys.is_active(key)  # 100 s after the first POST, 50 s after the second
    clock.now += 11
    assert not keys.is_active(key)
    assert keys.take_expired() == [key] and keys.take_expired() == []
    assert keys.create() != key


def test_put_extends_and_unknown_keys_are_1125() -> None:
    clock = Clock()
    keys = ListenKeys(60.0, clock)
    key = keys.create()
    clock.now += 59
    assert keys.keepalive(None) == key
    clock.now += 59
    assert keys.keepalive(key) == key
    with pytest.raises(ApiError) as err:
        keys.keepalive("other")
    assert err.value.code == -1125 and err.value.msg == "This listenKey does not exist."
    clock.now += 61
    with pytest.raises(ApiError):
        keys.keepalive(None)


def test_delete_is_not_an_expiry_but_expire_all_is() -> None:
    keys = ListenKeys(60.0, Clock())
    keys.close(keys.create())
    assert keys.take_expired() == []
    key = keys.create()
    assert keys.expire_all() == [key] and keys.take_expired() == [key]


@pytest.mark.parametrize(("path", "query", "route", "combined", "names"), [
    ("/ws/btcusdt@markPrice", "", "legacy", False, ["btcusdt@markPrice"]),
    ("/stream", "streams=btcusdt@aggTrade/ethusdt@kline_1m", "legacy", True,
     ["btcusdt@aggTrade", "ethusdt@kline_1m"]),
    ("/market/ws/0", "", "market", False, ["0"]),
    ("/public/ws/1", "", "public", False, ["1"]),
    ("/market/stream", "streams=btcusdt@ticker", "market", True, ["btcusdt@ticker"]),
    ("/public/stream", "streams=!bookTicker", "public", True, ["!bookTicker"]),
    ("/private/ws", "listenKey=K1", "private", False, ["K1"]),
    ("/private/ws/K2", "", "private", False, ["K2"]),
    ("/private/stream", "listenKey=K3&events=ORDER_TRADE_UPDATE", "private", True, ["K3"]),
])
def test_websocket_urls_route_as_on_binance(path: str, query: str, route: str, combined: bool,
                                            names: list[str]) -> None:
    target = ws_target(path, query)
    assert target is not None
    assert (target.route, target.combined, target.names) == (route, combined, names)


def test_non_stream_paths_are_not_websockets() -> None:
    assert ws_target("/fapi/v1/order", "") is None and ws_target("/market/foo", "") is None
    target = ws_target("/private/stream", "listenKey=K&events=ORDER_TRADE_UPDATE/ACCOUNT_UPDATE")
    assert target is not None and target.events == {"ORDER_TRADE_UPDATE", "ACCOUNT_UPDATE"}


class FakeSocket:
    closed = False

    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send_str(self, text: str) -> None:
        self.sent.append(json.loads(text))


def converse(route: str, *requests: Any, combined: bool = False) -> tuple[Connection, list[Any]]:
    async def main() -> tuple[Connection, list[Any]]:
        ws = FakeSocket()
        conn = Connection(ws, route, combined, Latency(), Metrics(),  # type: ignore[arg-type]
                          lambda key: key == "good-key")
        for request in requests:
            conn.handle_text(request if isinstance(request, str) else json.dumps(request))
        await conn.finish()
        return conn, ws.sent
    return asyncio.run(main())


def test_subscribe_list_unsubscribe_and_properties() -> None:
    conn, answers = converse(
        "market",
        {"method": "SUBSCRIBE", "params": ["btcusdt@markPrice@1s"], "id": 1, "use1sFreq": True},
        {"method": "SUBSCRIBE", "params": ["btcusdt@kline_1m", "ethusdt@ticker"], "id": 2},
        {"method": "UNSUBSCRIBE", "params": ["ethusdt@ticker"], "id": 3},
        {"method": "LIST_SUBSCRIPTIONS", "id": 4},
        {"method": "SET_PROPERTY", "params": ["combined", True], "id": 5},
        {"method": "GET_PROPERTY", "params": ["combined"], "id": 6})

    assert answers == [{"result": None, "id": 1}, {"result": None, "id": 2},
                       {"result": None, "id": 3},
                       {"result": ["btcusdt@markPrice@1s", "btcusdt@kline_1m"], "id": 4},
                       {"result": None, "id": 5}, {"result": True, "id": 6}]
    assert conn.combined


def test_documented_errors() -> None:
    _, answers = converse(
        "market",
        {"method": "SUBSCRIBE", "params": ["btcusdt@markPrice", "nope"], "id": 1},
        {"method": "SUBSCRIBE", "params": ["btcusdt@markPrice"], "id": -1},
        {"method": "SUBSCRIBE", "params": ["btcusdt@markPrice"], "id": "a"},
        {"method": "FOO", "id": 4}, {"id": 5}, "{not json",
        {"method": "LIST_SUBSCRIPTIONS", "id": 7})

    assert answers[0] == {"error": {"code": 2, "msg": "Invalid request: invalid stream"},
                          "id": 1}
    for answer in answers[1:3]:
        assert answer["error"] == {"code": 2, "msg": "Invalid request: request ID must be an "
                                                     "unsigned integer"}
    assert answers[3]["error"]["msg"].startswith("Invalid request: unknown variant `FOO`")
    assert answers[4]["error"]["msg"].startswith("Invalid request: missing field `method`")
    assert answers[5]["error"]["code"] == 3 and answers[5]["error"]["msg"].startswith(
        "Invalid JSON: expected")
    assert answers[6] == {"result": [], "id": 7}  # an invalid SUBSCRIBE adds nothing


def test_valid_stream_on_the_wrong_route_is_accepted_but_not_heard() -> None:
    conn, answers = converse("public", {"method": "SUBSCRIBE",
                                        "params": ["btcusdt@markPrice"], "id": 1})
    mark, book = parse_stream("btcusdt@markPrice"), parse_stream("btcusdt@bookTicker")
    assert mark is not None and book is not None
    assert answers == [{"result": None, "id": 1}]
    assert not conn.hears(mark) and conn.hears(book)
    legacy, _ = converse("legacy")
    assert legacy.hears(book) and not legacy.hears(mark)


def test_private_socket_subscribes_listen_keys_only() -> None:
    conn, answers = converse(
        "private", {"method": "SUBSCRIBE", "params": ["good-key"], "id": 1},
        {"method": "SUBSCRIBE", "params": ["btcusdt@markPrice"], "id": 2})

    assert answers[0] == {"result": None, "id": 1} and "error" in answers[1]
    assert conn.keys == ["good-key"]


def test_combined_sockets_wrap_payloads() -> None:
    async def main() -> list[Any]:
        ws = FakeSocket()
        conn = Connection(ws, "market", True, Latency(), Metrics(),  # type: ignore[arg-type]
                          lambda key: False)
        conn.send({"e": "kline"}, "kline", "btcusdt@kline_1m")
        await conn.finish()
        return ws.sent
    assert asyncio.run(main()) == [{"stream": "btcusdt@kline_1m", "data": {"e": "kline"}}]


def test_a_client_that_stops_reading_is_disconnected_not_buffered_forever() -> None:
    class StuckSocket(FakeSocket):
        closed_with: int | None = None

        async def send_str(self, text: str) -> None:
            await asyncio.sleep(3600)

        async def close(self, code: int) -> None:
            self.closed_with = code

    async def main() -> StuckSocket:
        ws = StuckSocket()
        conn = Connection(ws, "market", False, Latency(), Metrics(),  # type: ignore[arg-type]
                          lambda key: False)
        for i in range(MAX_BACKLOG + 10):
            conn.send({"e": "kline", "n": i}, "kline")
        await asyncio.sleep(0)
        assert conn._queue.qsize() <= MAX_BACKLOG
        conn._sender.cancel()
        return ws

    assert asyncio.run(main()).closed_with == 1008
