"""Seeded market simulator: one geometric Brownian motion per symbol, plus 1m candles.

A symbol can instead be replayed from OHLCV candles (see :mod:`.replay`): it then has no
generated history, its candles keep the file's timestamps, and it advances one sub-tick
per step instead of following the random walk.

Prices evolve as floats (the simulation is statistical anyway) and are quantised to the
symbol's tick whenever they leave this module, so every price a client sees is one the
exchange would accept back.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal

from shared.money import round_to_step

from .models import Candle
from .replay import ReplayCursor

MINUTE_MS = 60_000
YEAR_SECONDS = 365.0 * 24 * 3600
HISTORY_MINUTES = 7 * 1440  # one week of 1m candles, so 1h/4h/1d klines have some depth
MAX_CANDLES = 14 * 1440

INTERVAL_MS: dict[str, int] = {
    "1m": MINUTE_MS, "3m": 3 * MINUTE_MS, "5m": 5 * MINUTE_MS, "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS, "1h": 60 * MINUTE_MS, "2h": 120 * MINUTE_MS,
    "4h": 240 * MINUTE_MS, "1d": 1440 * MINUTE_MS,
}


@dataclass(frozen=True)
class SymbolSpec:
    """Static contract data, close to Binance's real USD-M filters for these symbols."""

    symbol: str
    base: str
    start_price: float
    tick_size: Decimal
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_notional: Decimal
    price_precision: int
    quantity_precision: int
    base_volume: float  # typical base-asset volume per minute, for synthetic volume


def _spec(symbol: str, start: float, tick: str, step: str, min_qty: str, max_qty: str,
          notional: str, pp: int, qp: int, vol: float) -> SymbolSpec:
    return SymbolSpec(symbol, symbol.removesuffix("USDT"), start, Decimal(tick), Decimal(step),
                      Decimal(min_qty), Decimal(max_qty), Decimal(notional), pp, qp, vol)


SYMBOLS: dict[str, SymbolSpec] = {
    s.symbol: s
    for s in (
        _spec("BTCUSDT", 60000.0, "0.10", "0.001", "0.001", "1000", "100", 2, 3, 150.0),
        _spec("ETHUSDT", 3000.0, "0.01", "0.001", "0.001", "10000", "20", 2, 3, 2500.0),
        _spec("BNBUSDT", 600.0, "0.010", "0.01", "0.01", "100000", "5", 3, 2, 900.0),
        _spec("ADAUSDT", 0.45, "0.00010", "1", "1", "10000000", "5", 5, 0, 2_000_000.0),
        _spec("DOGEUSDT", 0.15, "0.000010", "1", "1", "50000000", "5", 6, 0, 8_000_000.0),
    )
}


@dataclass(frozen=True)
class Tick:
    """One symbol's state after a simulator step; ``closed`` is a just-finished 1m candle."""

    symbol: str
    price: Decimal
    mark_price: Decimal
    closed: Candle | None = None


class _SymbolState:
    def __init__(self, spec: SymbolSpec, rng: random.Random) -> None:
        self.spec = spec
        self.rng = rng
        self.price = spec.start_price
        self.hold = False
        self.candles: deque[Candle] = deque(maxlen=MAX_CANDLES)
        self.current: Candle | None = None
        self.replay: ReplayCursor | None = None


class Market:
    """Thread-safe simulated prices. ``step()`` is driven by the exchange's ticker thread."""

    def __init__(self, seed: int, volatility_annual: float, tick_interval_ms: int,
                 now_ms: int | None = None,
                 replay: dict[str, list[Candle]] | None = None) -> None:
        self._lock = threading.Lock()
        self._sigma = volatility_annual
        self._dt = tick_interval_ms / 1000.0 / YEAR_SECONDS
        self._states: dict[str, _SymbolState] = {}
        start = int(time.time() * 1000) if now_ms is None else now_ms
        for spec in SYMBOLS.values():
            # String seeds hash through SHA-512, so runs are reproducible across processes.
            state = _SymbolState(spec, random.Random(f"{seed}:{spec.symbol}"))
            candles = (replay or {}).get(spec.symbol)
            if candles:
                state.replay = ReplayCursor(candles)
                self._replay_step(state)  # the live candle opens at the file's first open
            else:
                self._generate_history(state, start)
            self._states[spec.symbol] = state

    # --- history -------------------------------------------------------------------
    def _generate_history(self, state: _SymbolState, now_ms: int) -> None:
        """Walk backwards from the start price so the live price begins at a round number.

        GBM log-increments are symmetric, so a reversed path is as plausible as a forward one.
        """
        rng, spec = state.rng, state.spec
        sd = self._sigma * math.sqrt(60.0 / YEAR_SECONDS)
        current_open = now_ms - now_ms % MINUTE_MS
        closes = [spec.start_price]
        for _ in range(HISTORY_MINUTES):
            closes.append(closes[-1] * math.exp(rng.gauss(0.0, sd)))
        closes.reverse()  # closes[-1] is the start price, the live candle opens there
        for i in range(1, len(closes)):
            o, c = closes[i - 1], closes[i]
            wick_hi = abs(rng.gauss(0.0, sd * 0.5))
            wick_lo = abs(rng.gauss(0.0, sd * 0.5))
            open_time = current_open - (len(closes) - i) * MINUTE_MS
            volume = spec.base_volume * rng.uniform(0.5, 1.5)
            state.candles.append(Candle(open_time, o, max(o, c) * (1 + wick_hi),
                                        min(o, c) * (1 - wick_lo), c, volume))
        state.current = Candle(current_open, spec.start_price, spec.start_price,
                               spec.start_price, spec.start_price, 0.0)

    # --- live ----------------------------------------------------------------------
    def step(self, now_ms: int | None = None) -> list[Tick]:
        """Advance every unheld symbol by one tick and roll candles at minute boundaries."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        drift = -0.5 * self._sigma**2 * self._dt
        diffusion = self._sigma * math.sqrt(self._dt)
        ticks: list[Tick] = []
        with self._lock:
            for state in self._states.values():
                if state.replay is not None:
                    closed = None if state.hold else self._replay_step(state)
                    price = self._quantise(state)
                    ticks.append(Tick(state.spec.symbol, price, price, closed))
                    continue
                if not state.hold:
                    state.price *= math.exp(drift + diffusion * state.rng.gauss(0.0, 1.0))
                volume = state.spec.base_volume * self._dt * YEAR_SECONDS / 60.0
                volume *= state.rng.uniform(0.2, 1.8)
                closed = self._roll(state, now)
                assert state.current is not None
                state.current = state.current.extend(state.price, volume)
                price = self._quantise(state)
                ticks.append(Tick(state.spec.symbol, price, price, closed))
        return ticks

    @staticmethod
    def _replay_step(state: _SymbolState) -> Candle | None:
        """Next sub-tick of the file; returns the previous candle when a new one opens."""
        assert state.replay is not None
        step = state.replay.advance()
        if step is None:  # end of file: the replay stops, the last close holds
            return None
        state.price, candle = step
        closed = None
        if state.current is not None and state.current.open_time != candle.open_time:
            closed = state.current
            state.candles.append(closed)
        state.current = candle
        return closed

    def is_replayed(self, symbol: str) -> bool:
        with self._lock:
            return self._states[symbol].replay is not None

    @staticmethod
    def _roll(state: _SymbolState, now: int) -> Candle | None:
        assert state.current is not None
        open_time = now - now % MINUTE_MS
        if open_time <= state.current.open_time:
            return None
        closed = state.current
        state.candles.append(closed)
        # Fill silent minutes (e.g. a suspended process) with flat candles so the series
        # has no holes that would confuse indicator code downstream.
        # Beyond the kept history the flat candles would be dropped anyway: skip them.
        t = max(closed.open_time + MINUTE_MS, open_time - MAX_CANDLES * MINUTE_MS)
        while t < open_time:
            state.candles.append(Candle(t, closed.close, closed.close, closed.close,
                                        closed.close, 0.0))
            t += MINUTE_MS
        state.current = Candle(open_time, closed.close, closed.close, closed.close,
                               closed.close, 0.0)
        return closed

    def pin(self, symbol: str, price: Decimal, hold: bool | None = None) -> Tick:
        """Set a symbol's price (tests/ops); the walk continues from it unless held."""
        with self._lock:
            state = self._states[symbol]
            state.price = float(price)
            if hold is not None:
                state.hold = hold
            assert state.current is not None
            state.current = state.current.extend(state.price, 0.0)
            quantised = self._quantise(state)
            return Tick(symbol, quantised, quantised)

    # --- reads ---------------------------------------------------------------------
    @staticmethod
    def _quantise(state: _SymbolState) -> Decimal:
        return quantise(state.price, state.spec.tick_size)

    def price(self, symbol: str) -> Decimal:
        with self._lock:
            return self._quantise(self._states[symbol])

    def mark_price(self, symbol: str) -> Decimal:
        # Mark equals last here: there is no order book, so no basis to model.
        return self.price(symbol)

    def is_held(self, symbol: str) -> bool:
        with self._lock:
            return self._states[symbol].hold

    def candles_1m(self, symbol: str) -> list[Candle]:
        """All 1m candles, oldest first, including the live (unclosed) one."""
        with self._lock:
            state = self._states[symbol]
            assert state.current is not None
            return [*state.candles, state.current]

    def recent_klines(self, symbol: str, interval: str, count: int) -> list[Candle]:
        """The newest ``count`` candles of ``interval``, as :meth:`klines` builds them, but
        reading only the tail of the series (the WebSocket streams ask on every tick)."""
        size = INTERVAL_MS[interval]
        newest_first: list[Candle] = []
        with self._lock:
            state = self._states[symbol]
            assert state.current is not None
            for c in itertools.chain((state.current,), reversed(state.candles)):
                open_time = c.open_time - c.open_time % size
                if newest_first and newest_first[-1].open_time == open_time:
                    last = newest_first[-1]  # ``c`` is older: it gives the bucket's open
                    newest_first[-1] = replace(last, open=c.open, high=max(last.high, c.high),
                                               low=min(last.low, c.low),
                                               volume=last.volume + c.volume)
                elif len(newest_first) == count:
                    break
                else:
                    newest_first.append(replace(c, open_time=open_time))
        return newest_first[::-1]

    def klines(self, symbol: str, interval: str, limit: int, start_time: int | None,
               end_time: int | None) -> list[Candle]:
        """Candles of ``interval`` aggregated from the 1m series (Binance alignment: epoch)."""
        size = INTERVAL_MS[interval]
        buckets: list[Candle] = []
        for c in self.candles_1m(symbol):
            open_time = c.open_time - c.open_time % size
            if buckets and buckets[-1].open_time == open_time:
                last = buckets[-1]
                buckets[-1] = replace(last, high=max(last.high, c.high),
                                      low=min(last.low, c.low), close=c.close,
                                      volume=last.volume + c.volume)
            else:
                buckets.append(replace(c, open_time=open_time))
        if start_time is not None:
            buckets = [b for b in buckets if b.open_time + size > start_time]
        if end_time is not None:
            buckets = [b for b in buckets if b.open_time <= end_time]
        return buckets[:limit] if start_time is not None else buckets[-limit:]


def quantise(value: float | Decimal, tick: Decimal) -> Decimal:
    """A float price on the tick grid, as a clean Decimal (no binary noise)."""
    dec = value if isinstance(value, Decimal) else Decimal(repr(value))
    return round_to_step(dec, tick, ROUND_HALF_UP).quantize(tick)
