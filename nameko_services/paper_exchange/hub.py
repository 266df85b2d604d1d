"""Fans market ticks, timers and engine events out to the WebSocket connections.

Lives on the server's event loop. Other threads (the ticker, the engine's listener, REST
workers) hand work over with :meth:`Hub.submit` (``loop.call_soon_threadsafe``), so all
connection state is touched by one thread only. Payloads are built once per stream per
round and only for streams someone is subscribed to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Any

from . import streams, userdata, views
from .engine import MatchingEngine
from .events import UserEvent
from .listenkeys import ListenKeys
from .market import MINUTE_MS, SYMBOLS, Market, Tick, quantise
from .metrics import Latency, Metrics
from .streams import Stream
from .wsconn import Connection, ConnRoute

log = logging.getLogger(__name__)
PING_INTERVAL_S = 180.0  # Binance pings every 3 minutes
BOOK_QTY_LOTS = 100  # synthetic best bid/ask size, in minimum quantities


def now_ms() -> int:
    return int(time.time() * 1000)


class Hub:
    def __init__(self, market: Market, engine: MatchingEngine, keys: ListenKeys, latency: Latency,
                 metrics: Metrics) -> None:
        self.market = market
        self.engine = engine
        self.keys = keys
        self.latency = latency
        self.metrics = metrics
        self.conns: set[Connection] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._update_id = 0
        self._trade_id = dict.fromkeys(SYMBOLS, 0)
        self._last_price: dict[str, Decimal] = {}
        self._last_volume: dict[str, float] = {}
        self._seconds = 0

    # --- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        """Start the timers; call on the loop."""
        self.loop = asyncio.get_running_loop()
        for period, job in ((1.0, self._each_second), (2.0, self._tickers),
                            (5.0, self._all_book_tickers), (0.1, self.announce_expiries),
                            (PING_INTERVAL_S, self._ping)):
            self._tasks.append(self.loop.create_task(self._every(period, job)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.drop_all(1001)

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop (thread-safe; dropped once the loop is gone)."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closing between the check and the call
                loop.call_soon_threadsafe(fn, *args)

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        """Run ``coro`` on the loop from another thread and wait for its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _every(self, period: float, job: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                job()
            except Exception:  # one bad round must not stop the stream
                log.exception("websocket job %s failed", job.__name__)

    # --- connections ---------------------------------------------------------------
    def add(self, conn: Connection) -> None:
        self.conns.add(conn)
        self.metrics.ws_connections.labels(conn.route).inc()

    def remove(self, conn: Connection) -> None:
        if conn in self.conns:
            self.conns.discard(conn)
            self.metrics.ws_connections.labels(conn.route).dec()

    async def drop_all(self, code: int = 1000) -> int:
        conns = list(self.conns)
        await asyncio.gather(*(c.close(code) for c in conns))
        return len(conns)

    # --- market streams ------------------------------------------------------------
    def _fanout(self, want: Callable[[Stream], bool],
                build: Callable[[Stream], list[Any]]) -> None:
        cache: dict[tuple[str, str | None, str | None], list[Any]] = {}
        for conn in self.conns:
            for stream in list(conn.subs.values()):
                if not want(stream) or not conn.hears(stream):
                    continue
                key = (stream.kind, stream.symbol, stream.interval)
                if key not in cache:
                    cache[key] = build(stream)
                for payload in cache[key]:
                    first = payload[0] if isinstance(payload, list) and payload else payload
                    etype = first.get("e", "?") if isinstance(first, dict) else "?"
                    conn.send(payload, etype, stream.name)

    def on_ticks(self, ticks: list[Tick]) -> None:
        """Per tick: klines, book tickers and trades of the ticked symbols."""
        now = now_ms()
        by_symbol = {t.symbol: t for t in ticks}
        trades = {t.symbol: self._synthetic_trade(t) for t in ticks}

        def build(s: Stream) -> list[Any]:
            assert s.symbol is not None
            tick = by_symbol[s.symbol]
            if s.kind == "kline":
                return self._klines(tick, s.interval or "1m", now)
            if s.kind == "bookTicker":
                return [self._book_ticker(s.symbol, tick.price, now)]
            trade_id, qty, maker = trades[s.symbol]
            maker_fn = streams.agg_trade if s.kind == "aggTrade" else streams.trade
            return [maker_fn(s.symbol, trade_id, tick.price, qty, maker, now)]

        self._fanout(lambda s: s.symbol in by_symbol and s.kind in (
            "kline", "bookTicker", "aggTrade", "trade"), build)

    def _klines(self, tick: Tick, interval: str, now: int) -> list[Any]:
        size = streams.INTERVAL_MS[interval]
        closed = tick.closed is not None and (tick.closed.open_time + MINUTE_MS) % size == 0
        candles = self.market.recent_klines(tick.symbol, interval, 2 if closed else 1)
        out = [streams.kline(tick.symbol, interval, candles[-1], False, now)]
        if closed and len(candles) == 2:  # the bucket just closed: x=true first
            out.insert(0, streams.kline(tick.symbol, interval, candles[0], True, now))
        return out

    def _book_ticker(self, symbol: str, price: Decimal, now: int) -> dict[str, Any]:
        # No book: best bid/ask are exactly what a taker SELL/BUY would fill at now.
        self._update_id += 1
        spec = SYMBOLS[symbol]
        return streams.book_ticker(
            symbol, self._update_id, self.engine.price_for(symbol, "SELL", price),
            self.engine.price_for(symbol, "BUY", price), spec.min_qty * BOOK_QTY_LOTS, now)

    def _synthetic_trade(self, tick: Tick) -> tuple[int, Decimal, bool]:
        """One aggregate trade per tick: the volume the tick added, at the tick's price."""
        symbol, spec = tick.symbol, SYMBOLS[tick.symbol]
        self._trade_id[symbol] += 1
        volume = self.market.recent_klines(symbol, "1m", 1)[0].volume
        delta = volume - self._last_volume.get(symbol, 0.0)
        self._last_volume[symbol] = volume
        qty = quantise(max(delta, volume if delta < 0 else 0.0), spec.step_size)
        previous = self._last_price.get(symbol, tick.price)
        self._last_price[symbol] = tick.price
        return self._trade_id[symbol], max(qty, spec.min_qty), tick.price < previous

    def _each_second(self) -> None:
        self._seconds += 1
        now = now_ms()
        kinds = {"markPrice1s", "markPriceArr1s"}
        if self._seconds % 3 == 0:
            kinds |= {"markPrice", "markPriceArr"}

        def build(s: Stream) -> list[Any]:
            if s.symbol is not None:
                return [streams.mark_price(s.symbol, self.market.mark_price(s.symbol), now)]
            return [[streams.mark_price(sym, self.market.mark_price(sym), now)
                     for sym in SYMBOLS]]

        self._fanout(lambda s: s.kind in kinds, build)

    def _tickers(self) -> None:
        now = now_ms()
        bodies: dict[str, dict[str, Any]] = {}

        def body(symbol: str) -> dict[str, Any]:
            if symbol not in bodies:
                bodies[symbol] = views.ticker_24hr(self.market, symbol, now)
            return bodies[symbol]

        def build(s: Stream) -> list[Any]:
            fn = streams.ticker if s.kind.startswith("ticker") else streams.mini_ticker
            if s.symbol is not None:
                return [fn(body(s.symbol), now)]
            return [[fn(body(sym), now) for sym in SYMBOLS]]

        self._fanout(lambda s: s.kind in ("ticker", "miniTicker", "tickerArr",
                                          "miniTickerArr"), build)

    def _all_book_tickers(self) -> None:
        now = now_ms()
        self._fanout(lambda s: s.kind == "bookTickerAll", lambda s: [
            self._book_ticker(sym, self.market.price(sym), now) for sym in SYMBOLS])

    def _ping(self) -> None:
        for conn in self.conns:
            if not conn.ws.closed:
                asyncio.ensure_future(self._ping_one(conn))

    @staticmethod
    async def _ping_one(conn: Connection) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await conn.ws.ping()

    # --- user data -----------------------------------------------------------------
    def on_user_event(self, event: UserEvent) -> None:
        """Engine listener (any thread, under the engine lock): build now, send on the loop."""
        self.submit(self.send_user, userdata.user_payload(event, now_ms()))

    def send_user_event_now(self, event: UserEvent) -> None:
        """The listener for an engine driven on the loop's own thread (tests)."""
        self.send_user(userdata.user_payload(event, now_ms()))

    def send_user(self, payload: dict[str, Any]) -> None:
        for conn in self.conns:
            if conn.route != "private" or (conn.events is not None
                                           and payload["e"] not in conn.events):
                continue
            for key in conn.keys:
                if self.keys.is_active(key):
                    conn.send(payload, payload["e"], key)
                    break

    def announce_expiries(self) -> None:
        for key in self.keys.take_expired():
            payload = userdata.listen_key_expired(key, now_ms())
            for conn in self.conns:
                if key in conn.keys:
                    conn.keys.remove(key)  # the socket stays open and silent
                    conn.send(payload, "listenKeyExpired", key)

    def new_connection(self, ws: Any, route: ConnRoute, combined: bool) -> Connection:
        return Connection(ws, route, combined, self.latency, self.metrics, self.keys.is_active)
