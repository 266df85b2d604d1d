"""Candles and prices from market:stream records (pure; the reads are in dashboard.reading)."""

from __future__ import annotations

import threading
from collections.abc import Iterable

import pandas as pd

from dashboard.rows import StreamEntry, id_ms, num

CANDLE_COLUMNS = ["time", "open", "high", "low", "close", "volume"]


def market_symbols(entries: Iterable[StreamEntry]) -> list[str]:
    """Symbols seen on the market stream, sorted."""
    found = {
        str(e.record.data.get("symbol", "")).upper()
        for e in entries
        if e.record.type in ("tick", "kline") and e.record.data.get("symbol")
    }
    return sorted(found)


def latest_prices(entries: Iterable[StreamEntry]) -> dict[str, float]:
    """Last known price per symbol (tick price, else kline close)."""
    prices: dict[str, float] = {}
    for e in entries:
        data = e.record.data
        symbol = str(data.get("symbol", "")).upper()
        if not symbol:
            continue
        price = num(data.get("price")) if e.record.type == "tick" else None
        if price is None and e.record.type == "kline":
            price = num(data.get("close"))
        if price is not None:
            prices[symbol] = price
    return prices


class CandleBook:
    """OHLCV candles per symbol, accumulated from market records (thread-safe).

    Kline records are authoritative for their ``open_time`` (the latest update of a candle
    wins). Buckets not covered by any kline are built from tick prices, so the chart has
    data even when only ticks flow. Keeps at most ``max_candles`` per symbol, so a page left
    open shows more history than the stream's MAXLEN window holds.
    """

    def __init__(self, interval_ms: int = 60_000, max_candles: int = 720) -> None:
        self.interval_ms = interval_ms
        self.max_candles = max_candles
        self._klines: dict[str, dict[int, dict[str, float]]] = {}
        self._ticks: dict[str, dict[int, dict[str, float]]] = {}
        self._prices: dict[str, float] = {}
        self._lock = threading.Lock()
        self.last_id: str | None = None

    def ingest(self, entries: Iterable[StreamEntry]) -> None:
        with self._lock:
            for e in entries:
                self._ingest_one(e)
                self.last_id = e.id
            for book in (self._klines, self._ticks):
                for candles in book.values():
                    if len(candles) > self.max_candles:
                        for t in sorted(candles)[: len(candles) - self.max_candles]:
                            del candles[t]

    def _ingest_one(self, e: StreamEntry) -> None:
        data = e.record.data
        symbol = str(data.get("symbol", "")).upper()
        if not symbol:
            return
        if e.record.type == "kline":
            if str(data.get("interval") or "1m") != "1m":
                return  # the feed records 5m and 1h closes too; the chart is of 1m candles
            open_time = num(data.get("open_time"))
            o, h, low, c = (num(data.get(k)) for k in ("open", "high", "low", "close"))
            if open_time is None or o is None or h is None or low is None or c is None:
                return
            self._klines.setdefault(symbol, {})[int(open_time)] = {
                "open": o, "high": h, "low": low, "close": c,
                "volume": num(data.get("volume")) or 0.0,
            }
            self._prices.setdefault(symbol, c)
        elif e.record.type == "tick":
            price = num(data.get("price"))
            ts = e.record.ts or id_ms(e.id)
            if price is None or not ts:
                return
            self._prices[symbol] = price
            bucket = ts - ts % self.interval_ms
            candles = self._ticks.setdefault(symbol, {})
            candle = candles.get(bucket)
            if candle is None:
                candles[bucket] = {"open": price, "high": price, "low": price, "close": price,
                                   "volume": 0.0}
            else:
                candle["high"] = max(candle["high"], price)
                candle["low"] = min(candle["low"], price)
                candle["close"] = price

    def symbols(self) -> list[str]:
        with self._lock:
            return sorted(set(self._klines) | set(self._ticks))

    def prices(self) -> dict[str, float]:
        with self._lock:
            return dict(self._prices)

    def candles(self, symbol: str) -> pd.DataFrame:
        symbol = symbol.upper()
        with self._lock:
            merged = {**self._ticks.get(symbol, {}), **self._klines.get(symbol, {})}
            rows = [
                {"time": pd.Timestamp(t, unit="ms", tz="UTC"), **merged[t]}
                for t in sorted(merged)[-self.max_candles:]
            ]
        return pd.DataFrame(rows, columns=CANDLE_COLUMNS)


def build_candles(
    entries: Iterable[StreamEntry], symbol: str, interval_ms: int = 60_000
) -> pd.DataFrame:
    """OHLCV candles of one symbol from market records, oldest first (see CandleBook)."""
    book = CandleBook(interval_ms=interval_ms)
    book.ingest(entries)
    return book.candles(symbol)
