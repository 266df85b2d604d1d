"""Running a Feed in a thread of its own, and a fake Binance WebSocket side for it.

``FakeBinanceWs`` serves the WebSocket routes ccxt.pro dials (``/market/ws/N``,
``/public/ws/N``, ``/private/ws?listenKey=``) and the listenKey REST calls; every other REST
call is proxied to a real in-process paper exchange. It streams mark prices and klines for
what was subscribed, lets a test push user-data events, drop every socket and expire the
listenKey — the faults the feed must survive.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import redis
from aiohttp import web

from nameko_services.feed.engine import Feed
from shared.settings import Settings
from tests.support import waiting

T = TypeVar("T")


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """Poll ``condition`` until truthy (exceptions count as not yet); its value."""
    return waiting.wait_for(condition, timeout, what, ignore=(Exception,))


class FeedThread:
    """A Feed on its own event loop in a thread (as the process runs it)."""

    def __init__(self, settings: Settings, redis_url: str, **kwargs: Any) -> None:
        self.redis = redis.Redis.from_url(redis_url)
        self.feed = Feed(settings, self.redis, http_port=0, **kwargs)
        self.thread = threading.Thread(target=self._run, name="feed", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self.feed.run())
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc

    def start(self) -> FeedThread:
        self.thread.start()
        wait_for(self.feed.started.is_set, what="feed started")
        return self

    def stop(self) -> None:
        self.feed.stop()
        self.thread.join(15)
        self.redis.close()
        assert not self.thread.is_alive(), "feed did not stop"
        assert self.error is None, self.error

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.feed.http.port}"


@dataclass
class Conn:
    route: str
    ws: web.WebSocketResponse
    listen_key: str = ""
    streams: set[str] = field(default_factory=set)


class FakeBinanceWs:
    def __init__(self, rest_origin: str, interval_s: float = 0.2) -> None:
        self.rest_origin = rest_origin.rstrip("/")
        self.interval_s = interval_s
        self.conns: list[Conn] = []
        self.listen_key = ""
        self.key_seq = 0
        self.posts = 0
        self.puts = 0
        self.price = 50_000.0
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._session: aiohttp.ClientSession | None = None
        self._pusher: asyncio.Task[None] | None = None

    # --- lifecycle (test thread) ---
    def start(self, port: int = 0) -> FakeBinanceWs:
        self._thread.start()
        self.call(self._start(port))
        return self

    def stop(self) -> None:
        if not self.loop.is_running():
            return
        self.call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- faults and events (test thread) ---
    def drop_all(self) -> None:
        self.call(self._close([c for c in self.conns]))

    def expire_listen_key(self) -> None:
        async def expire() -> None:
            old, self.listen_key = self.listen_key, ""
            await self._send_private({"e": "listenKeyExpired", "E": str(int(time.time() * 1e3)),
                                      "listenKey": old})
        self.call(expire())

    def push_private(self, event: dict[str, Any]) -> None:
        self.call(self._send_private(event))

    def push_kline(self, event: dict[str, Any]) -> None:
        """Send ``event`` on the sockets subscribed to its kline stream."""
        k = event["k"]
        stream = f"{k['s'].lower()}@kline_{k['i']}"

        async def send() -> None:
            for c in self.conns:
                if stream in c.streams:
                    await c.ws.send_json(event)
        self.call(send())

    def private_conns(self) -> list[Conn]:
        return [c for c in self.conns if c.route == "private"]

    # --- server ---
    async def _start(self, port: int) -> None:
        app = web.Application()
        app.router.add_get("/{route}/ws", self._ws)
        app.router.add_get("/{route}/ws/{n}", self._ws)
        app.router.add_route("*", "/fapi/v1/listenKey", self._listen_key)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._session = aiohttp.ClientSession()
        self._pusher = asyncio.create_task(self._push_market())

    async def _stop(self) -> None:
        if self._pusher is not None:
            self._pusher.cancel()
        await self._close(list(self.conns))
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _close(self, conns: list[Conn]) -> None:
        for c in conns:
            await c.ws.close()

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        route = request.match_info["route"]
        key = request.query.get("listenKey", "")
        ws = web.WebSocketResponse()
        if route == "private" and (not key or key != self.listen_key):
            await ws.prepare(request)
            await ws.close()
            return ws
        await ws.prepare(request)
        conn = Conn(route, ws, key)
        self.conns.append(conn)
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                req = json.loads(msg.data)
                if req.get("method") == "SUBSCRIBE":
                    conn.streams.update(req.get("params") or [])
                    await ws.send_json({"result": None, "id": req.get("id")})
        finally:
            self.conns.remove(conn)
        return ws

    async def _listen_key(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            self.posts += 1
            if not self.listen_key:
                self.key_seq += 1
                self.listen_key = f"fake-listen-key-{self.key_seq}"
            return web.json_response({"listenKey": self.listen_key})
        if request.method == "PUT":
            self.puts += 1
            if not self.listen_key:
                return web.json_response({"code": -1125, "msg": "This listenKey does not exist."},
                                         status=400)
            return web.json_response({"listenKey": self.listen_key})
        self.listen_key = ""
        return web.json_response({})

    async def _proxy(self, request: web.Request) -> web.Response:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("x-mbx-apikey", "content-type")}
        async with self._session.request(
                request.method, self.rest_origin + request.path_qs, headers=headers,
                data=await request.read()) as resp:
            return web.Response(status=resp.status, body=await resp.read(),
                                content_type="application/json")

    async def _send_private(self, event: dict[str, Any]) -> None:
        for c in self.private_conns():
            await c.ws.send_json(event)

    async def _push_market(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            now = int(time.time() * 1000)
            self.price += 1.0
            for c in list(self.conns):
                for stream in list(c.streams):
                    ev = self._event(stream, now)
                    if ev is not None and not c.ws.closed:
                        try:
                            await c.ws.send_json(ev)
                        except ConnectionError:
                            pass

    def _event(self, stream: str, now: int) -> dict[str, Any] | None:
        sym, _, kind = stream.partition("@")
        s, p = sym.upper(), f"{self.price:.2f}"
        if kind.startswith("markPrice"):
            return {"e": "markPriceUpdate", "E": now, "s": s, "p": p, "i": p, "P": p,
                    "r": "0.0001", "T": now + 3_600_000}
        if kind == "bookTicker":
            return {"e": "bookTicker", "u": now, "E": now, "T": now, "s": s, "b": p, "B": "1",
                    "a": f"{self.price + 0.1:.2f}", "A": "1"}
        if kind == "miniTicker":
            return {"e": "24hrMiniTicker", "E": now, "s": s, "c": p, "o": p, "h": p, "l": p,
                    "v": "1", "q": "1"}
        if kind.startswith("kline_"):
            interval = kind[len("kline_"):]
            unit = {"m": 60_000, "h": 3_600_000}[interval[-1]] * int(interval[:-1])
            t = now - now % unit
            return {"e": "kline", "E": now, "s": s,
                    "k": {"t": t, "T": t + unit - 1, "s": s, "i": interval, "f": 1, "L": 2,
                          "o": p, "c": p, "h": p, "l": p, "v": "1", "n": 1,
                          "x": now - t >= unit - 250, "q": "1", "V": "1", "Q": "1",
                          "B": "0"}}
        return None
