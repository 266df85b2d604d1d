"""The hub's fan-out: which socket gets which event, kline closes, user data, expiries."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from nameko_services.paper_exchange.engine import MatchingEngine
from nameko_services.paper_exchange.hub import Hub
from nameko_services.paper_exchange.listenkeys import ListenKeys
from nameko_services.paper_exchange.market import MINUTE_MS, Market
from nameko_services.paper_exchange.metrics import Latency, Metrics
from nameko_services.paper_exchange.wsconn import Connection, ConnRoute

T0 = 1_700_000_010_000


class FakeSocket:
    closed = False

    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send_str(self, text: str) -> None:
        self.sent.append(json.loads(text))


Check = Callable[[], None]


Act = Callable[[Hub, Market, MatchingEngine, Callable[..., FakeSocket]], Check]


def with_hub(act: Act) -> None:
    """Run ``act`` on a loop, let every socket's sender drain, then run its check."""
    async def main() -> None:
        market = Market(seed=95, volatility_annual=0.6, tick_interval_ms=500, now_ms=T0)
        market.pin("BTCUSDT", Decimal(60000), hold=True)
        engine = MatchingEngine(market, Decimal(10000), Decimal("0.0005"), Decimal("0.0001"))
        hub = Hub(market, engine, ListenKeys(3600.0), Latency(), Metrics())
        engine.listeners.append(hub.send_user_event_now)
        conns: list[Connection] = []

        def connect(route: ConnRoute, *streams: str, keys: tuple[str, ...] = (),
                    events: frozenset[str] | None = None) -> FakeSocket:
            ws = FakeSocket()
            conn = hub.new_connection(ws, route, False)
            conn.handle_text(json.dumps({"method": "SUBSCRIBE", "params": list(streams),
                                         "id": 1}))
            conn.keys.extend(keys)
            conn.events = events
            hub.add(conn)
            conns.append(conn)
            return ws

        check = act(hub, market, engine, connect)
        for conn in conns:
            await conn.finish()
        check()
    asyncio.run(main())


def events_of(ws: FakeSocket) -> list[Any]:
    return [m for m in ws.sent if "id" not in m]


def test_kline_sends_the_closed_candle_with_x_true_then_the_new_one() -> None:
    def act(hub: Hub, market: Market, _: MatchingEngine,
            connect: Callable[..., FakeSocket]) -> Check:
        ws = connect("market", "btcusdt@kline_1m", "btcusdt@kline_5m")
        hub.on_ticks(market.step(T0 + 1000))
        live = T0 - T0 % MINUTE_MS
        hub.on_ticks(market.step(live + MINUTE_MS))
        return lambda: check(ws, live)

    def check(ws: FakeSocket, live: int) -> None:
        first, *closing = [m for m in events_of(ws) if m["k"]["i"] == "1m"]
        assert first["k"]["x"] is False and first["k"]["t"] == live
        assert [(m["k"]["t"], m["k"]["x"]) for m in closing] == [
            (live, True), (live + MINUTE_MS, False)]
        five = [m["k"]["x"] for m in events_of(ws) if m["k"]["i"] == "5m"]
        assert five.count(True) == (1 if (live + MINUTE_MS) % (5 * MINUTE_MS) == 0 else 0)

    with_hub(act)


def test_book_ticker_quotes_the_engine_fill_prices_on_the_public_route_only() -> None:
    def act(hub: Hub, market: Market, engine: MatchingEngine,
            connect: Callable[..., FakeSocket]) -> Check:
        public = connect("public", "btcusdt@bookTicker")
        market_route = connect("market", "btcusdt@bookTicker")

        hub.on_ticks(market.step(T0 + 1000))
        bid, ask = engine.fill_price("BTCUSDT", "SELL"), engine.fill_price("BTCUSDT", "BUY")

        def check() -> None:
            (book,) = events_of(public)
            assert book["b"] == str(bid) == "59994.00" and book["a"] == str(ask) == "60006.00"
            assert events_of(market_route) == []
        return check

    with_hub(act)


def test_user_events_go_to_private_sockets_with_an_active_key_and_matching_filter() -> None:
    def act(hub: Hub, _: Market, engine: MatchingEngine,
            connect: Callable[..., FakeSocket]) -> Check:
        key = hub.keys.create()
        everything = connect("private", keys=(key,))
        orders_only = connect("private", keys=(key,),
                              events=frozenset({"ORDER_TRADE_UPDATE"}))
        stale = connect("private", keys=("old-key",))
        public = connect("market", "btcusdt@markPrice")

        engine.place_market("BTCUSDT", "BUY", Decimal("0.01"), False, None)

        def check() -> None:
            assert [m["e"] for m in events_of(everything)] == [
                "ORDER_TRADE_UPDATE", "ORDER_TRADE_UPDATE", "ACCOUNT_UPDATE"]
            assert [m["e"] for m in events_of(orders_only)] == ["ORDER_TRADE_UPDATE"] * 2
            assert events_of(stale) == [] and events_of(public) == []
        return check

    with_hub(act)


def test_expiry_is_announced_once_and_silences_the_socket() -> None:
    def act(hub: Hub, _: Market, engine: MatchingEngine,
            connect: Callable[..., FakeSocket]) -> Check:
        key = hub.keys.create()
        ws = connect("private", keys=(key,))

        hub.keys.expire_all()
        hub.announce_expiries()
        hub.announce_expiries()
        engine.place_market("BTCUSDT", "BUY", Decimal("0.01"), False, None)

        def check() -> None:
            (expired,) = events_of(ws)
            assert expired["e"] == "listenKeyExpired" and expired["listenKey"] == key
        return check

    with_hub(act)
