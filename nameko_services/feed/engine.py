"""The Feed: one asyncio loop running the market and account streams and the HTTP side.

Tasks: one ``watch_*`` pump per stream (each call keeps ccxt's socket and subscriptions
alive; ccxt reconnects only inside the next call), a consumer per queue of teed raw events,
the listenKey keepalive, the freshness heartbeat and the health server.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import ccxt
import redis

from shared.money import Bracket, parse_brackets
from shared.names import MARKET_STREAM, TRADE_STREAM, TRADING_TOPIC
from shared.settings import Settings
from shared.state import StateWriter, now_ms
from shared.symbol_rules import SymbolRules, store_rules

from .account import AccountBook
from .client import TeeExchange, drop_private_clients, is_private, make_tee_exchange
from .http import HealthServer
from .market import MarketBook
from .metrics import FeedMetrics
from .parsing import events
from .sink import KafkaProducer, RecordSink

log = logging.getLogger("phoenix95.feed")

MAX_BACKOFF_S = 30.0


def backoff_s(failures: int) -> float:
    """ccxt's dial backoff: min(30 s, 0.1 s * 2^n)."""
    return min(MAX_BACKOFF_S, 0.1 * 2 ** min(failures, 10))


class Feed:
    def __init__(self, settings: Settings, redis_client: redis.Redis, *,
                 market_stream: str = MARKET_STREAM, trade_stream: str = TRADE_STREAM,
                 producer: KafkaProducer | None = None, http_host: str | None = None,
                 http_port: int | None = None, base_url: str | None = None,
                 ws_url: str | None = None, symbols: Sequence[str] | None = None) -> None:
        self.settings = settings
        self.redis = redis_client
        self.metrics = FeedMetrics()
        self.writer = StateWriter(redis_client)
        feed = settings.feed
        self.max_age_ms = int(feed.max_staleness_seconds * 1000)
        self.symbols = list(symbols or settings.trading.allowed_symbols)
        self.market_sink = RecordSink(redis_client, settings.redis_streams.maxlen, self.metrics)
        self.trade_sink = RecordSink(redis_client, settings.redis_streams.maxlen, self.metrics,
                                     producer, TRADING_TOPIC)
        self.market = MarketBook(self.symbols, feed.timeframes, feed.candle_limit, self.writer,
                                 self.market_sink, self.metrics, market_stream)
        self.account = AccountBook(self.writer, self.trade_sink, self.metrics, trade_stream)
        self.http = HealthServer(self, http_host or settings.services.bind_address(),
                                 settings.services.feed_port if http_port is None else http_port)
        self._base_url, self._ws_url = base_url, ws_url
        self.ex: TeeExchange | None = None
        self.unified: dict[str, str] = {}  # exchange id -> ccxt symbol
        self.started = threading.Event()  # HTTP up and streams starting (for tests)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._market_q: asyncio.Queue[Any] = asyncio.Queue()
        self._account_q: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._reseed: asyncio.Task[None] | None = None
        self._bad_logged = 0
        # computed at scrape time, so /metrics is never a heartbeat behind
        self.metrics.state_age.labels("market").set_function(self._market_age_s)
        self.metrics.state_age.labels("account").set_function(self._account_age_s)

    # --- lifecycle ---
    def stop(self) -> None:
        """Thread-safe: ask :meth:`run` to finish."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def run(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        await self.http.start()
        self.ex = make_tee_exchange(self.settings, self, base_url=self._base_url,
                                    ws_url=self._ws_url)
        tasks: list[asyncio.Task[Any]] = []
        try:
            self.started.set()
            tasks.append(asyncio.create_task(self._heartbeat(), name="heartbeat"))
            if await self._load_markets():
                tasks += self._stream_tasks(self.ex)
            await self._stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._mark_down()
            await self.ex.close()
            await self.http.stop()
            await asyncio.get_running_loop().run_in_executor(None, self.trade_sink.close)

    def _stream_tasks(self, ex: TeeExchange) -> list[asyncio.Task[Any]]:
        syms = [self.unified[s] for s in self.symbols]
        pairs = [[s, tf] for s in syms for tf in self.settings.feed.timeframes]
        jobs: dict[str, Coroutine[Any, Any, None]] = {
            "market_events": self._consume_market(),
            "account_events": self._consume_account(),
            "mark": self._pump("mark", lambda: ex.watch_mark_prices(syms)),
            "kline": self._pump("kline", lambda: ex.watch_ohlcv_for_symbols(pairs),
                                on_up=self._seed_candles),
            "book": self._pump("book", lambda: ex.watch_bids_asks(syms)),
            "ticker": self._pump("ticker", lambda: ex.watch_tickers(syms)),
            "account": self._pump("account", ex.watch_orders, on_fail=self._account_failed),
            "listen_key": self._keep_listen_key(),
        }
        return [asyncio.create_task(job, name=name) for name, job in jobs.items()]

    async def _load_markets(self) -> bool:
        assert self.ex is not None and self._stop is not None
        failures = 0
        while not self._stop.is_set():
            try:
                self.metrics.rest.labels("load_markets").inc()
                await self.ex.load_markets()
                break
            except ccxt.BaseError as exc:
                failures += 1
                log.warning("load_markets failed (%s); retrying", exc)
                if await self._sleep(backoff_s(failures)):
                    return False
        for sid in self.symbols:
            rows = self.ex.markets_by_id.get(sid) or []
            linear = [m for m in rows if m.get("linear")] or rows
            if linear:
                self.unified[sid] = linear[0]["symbol"]
            else:
                log.error("symbol %s is not listed by the exchange: not fed", sid)
        self.symbols = [s for s in self.symbols if s in self.unified]
        return bool(self.symbols)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when stopping."""
        assert self._stop is not None
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
            return True
        except TimeoutError:
            return False

    # --- the tee (called synchronously from ccxt's receive loop) ---
    def message(self, client: Any, message: Any) -> None:
        private = is_private(client)
        for ev in events(message):
            if private:
                self._account_q.put_nowait(("event", ev))
            else:
                self._market_q.put_nowait(ev)

    def connected(self, client: Any) -> None:
        if is_private(client):
            self.account.on_connected(client)
            self._account_q.put_nowait(("resync", client))
            log.info("user-data stream connected")

    def down(self, client: Any, reason: Any) -> None:
        try:
            if is_private(client):
                if self.account.on_down(client):
                    log.warning("user-data stream down: %s", reason)
            else:
                self.market.down()
                self.writer.mark_down(market=True)
        except redis.RedisError as exc:
            log.error("marking the state down failed: %s", exc)

    # --- pumps ---
    async def _pump(self, name: str, call: Callable[[], Awaitable[Any]], *,
                    on_up: Callable[[], Awaitable[None]] | None = None,
                    on_fail: Callable[[], None] | None = None) -> None:
        failures, need_up = 0, True
        while True:
            try:
                await call()
                if need_up and on_up is not None:
                    await on_up()
                need_up, failures = False, 0
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise
                self._pump_failed(name, "watch cancelled", failures)  # a closed client
            except Exception as exc:  # noqa: BLE001 - a stream failure is never fatal
                self._pump_failed(name, exc, failures)
            else:
                continue
            failures, need_up = failures + 1, True
            if on_fail is not None:
                on_fail()
            if await self._sleep(backoff_s(failures)):
                return

    def _pump_failed(self, name: str, exc: Any, failures: int) -> None:
        self.metrics.reconnects.labels(name).inc()
        level = logging.WARNING if failures == 0 else logging.DEBUG
        log.log(level, "%s stream failed (%s: %s); reconnecting", name,
                type(exc).__name__, exc)

    def _account_failed(self) -> None:
        client = self.account.client
        if client is None or client.closed():
            self.account.on_down()
        # The key may be what failed (an exchange restarted or expired it: the dial gets
        # -1125), and ccxt would keep redialling with it: re-POST on the next watch. Binance
        # answers a POST with the same key while it is active, so a plain drop loses nothing.
        if self.ex is not None:
            self.ex.options["linear"] = {"listenKey": None, "lastAuthenticatedTime": 0}

    async def _seed_candles(self) -> None:
        """REST candles for every (symbol, timeframe): at start and after a reconnect."""
        assert self.ex is not None
        # the symbols' rules first: they are reference data every reader needs, and a Redis
        # that lost its data (the reseed path) lost them too
        rules = [SymbolRules.from_ccxt_market(self.ex.market(self.unified[sid]),
                                              await self._brackets(sid))
                 for sid in self.symbols]
        await asyncio.get_running_loop().run_in_executor(None, store_rules, self.redis, rules)
        limit = self.settings.feed.candle_limit + 1  # + the forming one
        for sid in self.symbols:
            for tf in self.settings.feed.timeframes:
                self.metrics.rest.labels("fetch_ohlcv").inc()
                rows = await self.ex.fetch_ohlcv(self.unified[sid], tf, limit=limit)
                self.market.seed(sid, tf, rows)
        self.market.flush()

    async def _brackets(self, sid: str) -> tuple[Bracket, ...]:
        """The symbol's leverage brackets (signed REST); none when the exchange refuses,
        and readers use the built-in table."""
        assert self.ex is not None
        try:
            self.metrics.rest.labels("leverage_bracket").inc()
            return parse_brackets(await self.ex.fapiPrivateGetLeverageBracket({"symbol": sid}))
        except (ccxt.BaseError, KeyError, TypeError, ValueError) as exc:
            log.warning("leverage brackets of %s not fetched (built-in table used): %s",
                        sid, exc)
            return ()

    # --- consumers ---
    async def _consume_market(self) -> None:
        while True:
            batch = [await self._market_q.get()]
            while not self._market_q.empty():
                batch.append(self._market_q.get_nowait())
            for ev in batch:
                try:
                    self.market.handle(ev)
                except Exception:  # noqa: BLE001 - one bad message never stops the feed
                    self._bad("market", ev)
            try:
                self.market.flush()
            except redis.RedisError as exc:
                log.error("storing market state failed: %s", exc)

    async def _consume_account(self) -> None:
        while True:
            kind, payload = await self._account_q.get()
            try:
                await self._account_item(kind, payload)
            except redis.RedisError as exc:
                log.error("storing account state failed: %s", exc)
            except Exception:  # noqa: BLE001 - one bad message never stops the feed
                self._bad("account", payload)
            if self._account_q.empty():
                try:
                    self.trade_sink.flush()
                except redis.RedisError as exc:
                    log.error("appending trade records failed: %s", exc)

    async def _account_item(self, kind: str, payload: Any) -> None:
        if kind == "resync":
            await self._resync(payload)
        elif kind == "expire":
            await self._renew_listen_key(str(payload))
        elif payload.get("e") == "listenKeyExpired":
            await self._renew_listen_key("listenKeyExpired")
        else:
            self.account.handle(payload)

    async def _resync(self, client: Any) -> None:
        """Snapshot for the socket ``client`` until stored, or until that socket is gone."""
        assert self.ex is not None
        failures = 0
        while self.account.client is client and self.account.connected:
            try:
                self.account.store_snapshot(await self.account.snapshot(self.ex))
                self.writer.heartbeat(account=True)
                log.info("account resynchronised (%d positions)", len(self.account.positions))
                return
            except (ccxt.BaseError, redis.RedisError) as exc:
                failures += 1
                log.warning("account snapshot failed (%s); retrying", exc)
                if await self._sleep(backoff_s(failures)):
                    return

    def _bad(self, stream: str, payload: Any) -> None:
        self.metrics.bad_events.labels(stream).inc()
        if self._bad_logged < 20:
            self._bad_logged += 1
            log.exception("bad %s message skipped: %.300r", stream, payload)

    # --- listenKey ---
    async def _keep_listen_key(self) -> None:
        """PUT the key every ``listen_key_keepalive_s``; a failed PUT re-creates it."""
        assert self.ex is not None
        while not await self._sleep(self.settings.feed.listen_key_keepalive_s):
            if not (self.ex.options.get("linear") or {}).get("listenKey"):
                continue
            try:
                self.metrics.rest.labels("put_listen_key").inc()
                await self.ex.fapiPrivatePutListenKey()
            except Exception as exc:  # noqa: BLE001 - any failure means: make a new key
                self._account_q.put_nowait(("expire", f"listenKey keepalive failed: {exc}"))

    async def _renew_listen_key(self, reason: str) -> None:
        assert self.ex is not None
        log.warning("%s: re-creating the listenKey and resynchronising", reason)
        self.metrics.reconnects.labels("listen_key").inc()
        self.account.on_down()
        await drop_private_clients(self.ex, reason)

    # --- freshness ---
    async def _heartbeat(self) -> None:
        interval = self.settings.feed.heartbeat_interval_s
        while True:
            now = now_ms()
            try:
                self._recover_lost_state()
                market_ok = self.market.fresh(self.max_age_ms, now)
                if market_ok:
                    self.writer.heartbeat(market=True, at_ms=now)
                if self.account.live:
                    self.writer.heartbeat(account=True, at_ms=now)
                self.writer.mark_down(market=not market_ok, account=not self.account.live)
            except redis.RedisError as exc:
                log.error("heartbeat failed: %s", exc)
            await asyncio.sleep(interval)

    def _recover_lost_state(self) -> None:
        """Redis restarted empty (it keeps nothing on disk): the account marker of the last
        snapshot is gone while we still count as synced. Stop beating at once (readers see
        the account stale, not flat) and resynchronise the account and the candles."""
        if not self.account.live or self.writer.account_synced():
            return
        log.error("the account state in Redis is gone (Redis restarted?): resynchronising")
        self.metrics.reconnects.labels("state_lost").inc()
        self.account.synced = False
        self.writer.mark_down(account=True)
        self._account_q.put_nowait(("resync", self.account.client))
        if self.ex is not None and (self._reseed is None or self._reseed.done()):
            self._reseed = asyncio.create_task(self._reseed_candles(), name="reseed")

    async def _reseed_candles(self) -> None:
        try:
            await self._seed_candles()
        except (ccxt.BaseError, redis.RedisError) as exc:
            log.warning("candles not reseeded after the state loss: %s", exc)

    def _market_age_s(self) -> float:
        last = self.market.last_mark_ms
        return (now_ms() - last) / 1000 if last else -1.0

    def _account_age_s(self) -> float:
        """0 while live; else since the last resync (-1: never synchronised)."""
        synced = self.account.synced_ms
        return 0.0 if self.account.live else (now_ms() - synced) / 1000 if synced else -1.0

    def _mark_down(self) -> None:
        try:
            self.writer.mark_down(market=True, account=True)
        except redis.RedisError as exc:
            log.error("marking the state down failed: %s", exc)

    def readiness(self) -> dict[str, bool]:
        checks = {"market_fresh": self.market.fresh(self.max_age_ms),
                  "account_fresh": self.account.live}
        try:
            checks["redis"] = bool(self.redis.ping())
        except redis.RedisError:
            checks["redis"] = False
        return checks
