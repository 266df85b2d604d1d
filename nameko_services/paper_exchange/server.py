"""Wires market, engine, the HTTP+WebSocket server and the ticker thread into one object.

Used by ``__main__`` and, in-process on a free port, by the tests. Threads: the ticker
(market steps, triggers, liquidations), the server's event loop (aiohttp: REST hand-off and
every WebSocket), and the loop's pool of REST workers running the WSGI app.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from decimal import Decimal
from pathlib import Path

from shared.settings import Settings

from .api import JsonBody, PaperApi
from .engine import MatchingEngine
from .hub import Hub
from .limiter import WeightLimiter
from .listenkeys import ListenKeys
from .market import SYMBOLS, Market, Tick
from .metrics import Latency, Metrics
from .replay import load_csv
from .store import PaperStore
from .webapp import WebServer

log = logging.getLogger(__name__)
DEFAULT_SLIPPAGE = Decimal("0.0001")  # 1 bp against the taker: deterministic, small


class PaperExchange:
    def __init__(self, settings: Settings, *, host: str | None = None, port: int | None = None,
                 slippage: Decimal = DEFAULT_SLIPPAGE,
                 state_path: Path | str | None = None) -> None:
        """``state_path`` overrides ``paper_exchange.state_path`` ("" = in memory only)."""
        cfg = settings.paper_exchange
        self.settings = settings
        self.interval_s = cfg.tick_interval_ms / 1000.0
        replay_path = cfg.resolved_replay_csv()
        replay = load_csv(replay_path, frozenset(SYMBOLS)) if replay_path else None
        self.market = Market(cfg.seed, cfg.volatility_annual, cfg.tick_interval_ms,
                             replay=replay)
        path = cfg.resolved_state_path() if state_path is None else (
            Path(state_path) if str(state_path) not in ("", ":memory:") else None)
        self.store = PaperStore(path) if path is not None else None
        self.engine = MatchingEngine(self.market, Decimal(str(cfg.starting_balance)),
                             Decimal(str(cfg.taker_fee)), slippage, store=self.store)
        limiter = (WeightLimiter(cfg.max_requests_per_minute)
                   if cfg.max_requests_per_minute else None)
        self.listen_keys = ListenKeys(cfg.listen_key_ttl_s)
        self.metrics = Metrics()
        latency = Latency(cfg.latency_ms, cfg.latency_jitter_ms)
        self.hub = Hub(self.market, self.engine, self.listen_keys, latency, self.metrics)
        self.engine.listeners.append(self.hub.on_user_event)
        self.api = PaperApi(self.engine, self.market,
                            settings.exchange.api_key.get_secret_value(),
                            settings.exchange.api_secret.get_secret_value(), limiter=limiter,
                            listen_keys=self.listen_keys,
                            admin_hooks={("POST", "/paper/ws/drop"): self._drop_sockets,
                                         ("POST", "/paper/listenkey/expire"): self._expire_keys})
        self.web = WebServer(self.api, self.hub, self.metrics, latency,
                             timeout_hold_s=settings.exchange.timeout_ms / 1000.0 + 1.0)
        # Bound now, so .port is known (port 0) before start(), as with a WSGI server.
        self._sock = socket.create_server((host or cfg.host, cfg.port if port is None else port),
                                          backlog=128)
        self._sock.setblocking(False)
        self._loop = asyncio.new_event_loop()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    @property
    def _host(self) -> str:
        host = str(self._sock.getsockname()[0])
        return f"[{host}]" if ":" in host else host

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self._host}:{self.port}/ws"

    def start(self) -> None:
        started = threading.Event()
        self._threads = [
            threading.Thread(target=self._serve, args=(started,), name="paper-http",
                             daemon=True),
            threading.Thread(target=self._tick_loop, name="paper-ticker", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        if not started.wait(10):
            raise RuntimeError("paper exchange server did not start")
        cfg = self.settings.paper_exchange
        log.info("paper exchange listening on %s (WebSocket %s); state: %s; market: %s",
                 self.base_url, self.ws_url,
                 self.store.path if self.store is not None else "in memory only",
                 f"replay of {cfg.resolved_replay_csv()}" if cfg.replay_csv
                 else f"simulated, seed {cfg.seed}")

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self.web.start(self._sock))
        started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.web.stop())
        self._loop.close()

    def stop(self) -> None:
        self._stop.set()
        if self._threads and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
        for thread in self._threads:
            thread.join(timeout=10)
        if not self._threads:
            self._loop.close()
        self._sock.close()
        if self.store is not None:
            with self.engine.lock:  # no write can be half-way through the connection
                self.store.close()
        log.info("paper exchange stopped")

    # --- admin hooks (run on a REST worker thread) -----------------------------------
    def _drop_sockets(self) -> JsonBody:
        return {"dropped": self.hub.run(self.hub.drop_all())}

    def _expire_keys(self) -> JsonBody:
        expired = self.listen_keys.expire_all()
        self.hub.submit(self.hub.announce_expiries)
        return {"expired": expired}

    # --- market ticks ----------------------------------------------------------------
    def tick_once(self) -> list[Tick]:
        ticks = self.market.step()
        for t in ticks:
            self.engine.on_mark(t.symbol, t.mark_price)
        self.hub.submit(self.hub.on_ticks, ticks)
        return ticks

    def _tick_loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.tick_once()
            except Exception:  # keep ticking: a stuck market would silently disable stops
                log.exception("market tick failed")
            next_at += self.interval_s
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind: skip, don't burst
                next_at = time.monotonic()
                delay = 0
            self._stop.wait(delay)
