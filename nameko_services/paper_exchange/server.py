"""Wires market, engine, HTTP server and the ticker thread into one startable object.

Used by ``__main__`` and, in-process on a free port, by the tests.
"""

from __future__ import annotations

import logging
import threading
import time
from decimal import Decimal
from pathlib import Path

from werkzeug.serving import BaseWSGIServer, make_server

from shared import names
from shared.records import Record
from shared.settings import Settings

from .api import PaperApi
from .engine import Engine
from .limiter import WeightLimiter
from .market import SYMBOLS, Market, Tick, quantise
from .publisher import StreamPublisher
from .replay import load_csv
from .store import PaperStore

log = logging.getLogger(__name__)
DEFAULT_SLIPPAGE = Decimal("0.0001")  # 1 bp against the taker: deterministic, small


def tick_records(ticks: list[Tick], tick_sizes: dict[str, Decimal]) -> list[Record]:
    records = [Record("tick", {"symbol": t.symbol, "price": t.price, "mark_price": t.mark_price})
               for t in ticks]
    for t in ticks:
        if t.closed is not None:
            c, step = t.closed, tick_sizes[t.symbol]
            records.append(Record("kline", {
                "symbol": t.symbol, "interval": "1m", "open_time": c.open_time,
                "open": quantise(c.open, step), "high": quantise(c.high, step),
                "low": quantise(c.low, step), "close": quantise(c.close, step),
                "volume": Decimal(repr(round(c.volume, 3))),
            }))
    return records


class PaperExchange:
    def __init__(self, settings: Settings, *, host: str | None = None, port: int | None = None,
                 stream: str = names.MARKET_STREAM, slippage: Decimal = DEFAULT_SLIPPAGE,
                 publish: bool = True, state_path: Path | str | None = None) -> None:
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
        self.engine = Engine(self.market, Decimal(str(cfg.starting_balance)),
                             Decimal(str(cfg.taker_fee)), slippage, store=self.store)
        limiter = (WeightLimiter(cfg.max_requests_per_minute)
                   if cfg.max_requests_per_minute else None)
        self.api = PaperApi(self.engine, self.market,
                            settings.exchange.api_key.get_secret_value(),
                            settings.exchange.api_secret.get_secret_value(), limiter=limiter)
        self.publisher = (StreamPublisher(settings.redis_streams.url, stream,
                                          settings.redis_streams.maxlen) if publish else None)
        self._server: BaseWSGIServer = make_server(
            host or cfg.host, cfg.port if port is None else port, self.api, threaded=True)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._tick_sizes = {s: spec.tick_size for s, spec in SYMBOLS.items()}

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    @property
    def base_url(self) -> str:
        host = self._server.server_address[0]
        return f"http://{host if isinstance(host, str) else host.decode()}:{self.port}"

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="paper-http", daemon=True),
            threading.Thread(target=self._tick_loop, name="paper-ticker", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        cfg = self.settings.paper_exchange
        log.info("paper exchange listening on %s; state: %s; market: %s", self.base_url,
                 self.store.path if self.store is not None else "in memory only",
                 f"replay of {cfg.resolved_replay_csv()}" if cfg.replay_csv
                 else f"simulated, seed {cfg.seed}")

    def stop(self) -> None:
        self._stop.set()
        if self._threads:  # shutdown() would wait forever for a loop that never ran
            self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        if self.publisher is not None:
            self.publisher.close()
        if self.store is not None:
            with self.engine.lock:  # no write can be half-way through the connection
                self.store.close()
        log.info("paper exchange stopped")

    def tick_once(self) -> list[Tick]:
        ticks = self.market.step()
        for t in ticks:
            self.engine.on_mark(t.symbol, t.mark_price)
        if self.publisher is not None:
            self.publisher.publish(tick_records(ticks, self._tick_sizes))
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
            if delay < 0:  # fell behind (e.g. slow Redis): skip, don't burst
                next_at = time.monotonic()
                delay = 0
            self._stop.wait(delay)
