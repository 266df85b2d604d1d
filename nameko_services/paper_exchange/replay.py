"""Replaying a market from an OHLCV CSV (``paper_exchange.replay_csv``).

CSV: a header with ``timestamp,open,high,low,close,volume`` and an optional ``symbol``
column (rows without one drive BTCUSDT). ``timestamp`` is the candle's open time as epoch
milliseconds (a value below 1e11 is taken as seconds) or ISO 8601 (naive = UTC). Rows of
one symbol must be in strictly increasing time order.

``replay_csv`` may also name a **folder of the shared kline format** (``/work/shared/data/
klines``: one gzip or plain CSV per symbol and interval, ``SYMBOL-5m.csv.gz`` with the header
``open_time_ms,open,high,low,close,volume``) or one such file. From a folder, each symbol
replays its finest file (1m, else 5m), and every series starts at the latest first candle
among them so that the symbols move through the same real hours together.

Each candle is walked in four ticks of the exchange's tick interval: open, the nearer
extreme, the other extreme, close (open -> low -> high -> close for a rising candle,
open -> high -> low -> close for a falling one), so stops and liquidations see the bar's
whole range. At the end of the file the replay **stops**: the last close is held and the
symbol no longer moves (it can still be pinned).
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from datetime import UTC, datetime
from pathlib import Path

from .models import Candle

DEFAULT_SYMBOL = "BTCUSDT"
REQUIRED = ("timestamp", "open", "high", "low", "close", "volume")
SUBTICKS = 4
SHARED_HEADER = "open_time_ms"
SHARED_NAME = re.compile(r"^([A-Z0-9]+)-(\d+[mhd])\.csv(\.gz)?$")
REPLAY_INTERVALS = ("1m", "5m")  # finest first; coarser files are never replayed


def parse_timestamp(raw: str) -> int:
    text = raw.strip()
    if text.lstrip("-").isdigit():
        value = int(text)
        return value * 1000 if abs(value) < 100_000_000_000 else value
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _candle(row: dict[str, str]) -> Candle:
    candle = Candle(parse_timestamp(row["timestamp"]), float(row["open"]), float(row["high"]),
                    float(row["low"]), float(row["close"]), float(row["volume"]))
    if min(candle.open, candle.high, candle.low, candle.close) <= 0 or candle.volume < 0:
        raise ValueError("prices must be positive and volume non-negative")
    if candle.high < max(candle.open, candle.close) or candle.low > min(candle.open,
                                                                         candle.close):
        raise ValueError("high/low do not contain open and close")
    return candle


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return io.TextIOWrapper(path.open("rb"), encoding="utf-8", newline="")


def shared_files(folder: Path, symbols: frozenset[str] | None = None) -> dict[str, Path]:
    """The file each symbol of a shared-format folder replays: its 1m file, else its 5m."""
    found: dict[str, dict[str, Path]] = {}
    for f in sorted(folder.iterdir()):
        m = SHARED_NAME.match(f.name)
        if m and m.group(2) in REPLAY_INTERVALS and (symbols is None or m.group(1) in symbols):
            found.setdefault(m.group(1), {})[m.group(2)] = f
    return {sym: by_tf[next(tf for tf in REPLAY_INTERVALS if tf in by_tf)]
            for sym, by_tf in sorted(found.items())}


def load_csv(path: Path, symbols: frozenset[str] | None = None) -> dict[str, list[Candle]]:
    """Candles per symbol; a malformed file fails at start-up, naming file and line.

    ``path`` is a CSV (optionally with a ``symbol`` column), one shared-format kline file, or
    a folder of them (see the module docstring)."""
    if path.is_dir():
        files = shared_files(path, symbols)
        if not files:
            raise ValueError(f"{path}: no SYMBOL-1m/5m.csv[.gz] kline files"
                             + (f" for {sorted(symbols)}" if symbols else ""))
        out = {sym: _load_one(f, symbols, sym)[sym] for sym, f in files.items()}
        start = max(series[0].open_time for series in out.values())
        aligned = {s: [c for c in series if c.open_time >= start] for s, series in out.items()}
        return {s: series for s, series in aligned.items() if series}
    m = SHARED_NAME.match(path.name)
    return _load_one(path, symbols, m.group(1) if m else None)


def _load_one(path: Path, symbols: frozenset[str] | None,
              file_symbol: str | None) -> dict[str, list[Candle]]:
    out: dict[str, list[Candle]] = {}
    with _open_text(path) as handle:
        reader = csv.DictReader(handle)
        header = [h.strip().lower() for h in reader.fieldnames or []]
        if SHARED_HEADER in header and "timestamp" not in header:
            header = ["timestamp" if h == SHARED_HEADER else h for h in header]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        reader.fieldnames = header
        for line, row in enumerate(reader, start=2):
            symbol = (row.get("symbol") or file_symbol or DEFAULT_SYMBOL).strip().upper()
            try:
                if symbols is not None and symbol not in symbols:
                    raise ValueError(f"unknown symbol {symbol}")
                candle = _candle(row)
            except (ValueError, TypeError, KeyError) as exc:
                raise ValueError(f"{path}:{line}: {exc}") from None
            series = out.setdefault(symbol, [])
            if series and candle.open_time <= series[-1].open_time:
                raise ValueError(f"{path}:{line}: {symbol} timestamps must increase")
            series.append(candle)
    if not out:
        raise ValueError(f"{path}: no candles")
    return out


class ReplayCursor:
    """Position in one symbol's candles; ``advance`` yields the next sub-tick."""

    def __init__(self, candles: list[Candle]) -> None:
        if not candles:
            raise ValueError("nothing to replay")
        self.candles = candles
        self.index = 0
        self.sub = 0

    @property
    def finished(self) -> bool:
        return self.index >= len(self.candles)

    @staticmethod
    def path(c: Candle) -> tuple[float, float, float, float]:
        if c.close >= c.open:
            return c.open, c.low, c.high, c.close
        return c.open, c.high, c.low, c.close

    def advance(self) -> tuple[float, Candle] | None:
        """(price, the candle as formed so far), or None once the file is used up."""
        if self.finished:
            return None
        candle = self.candles[self.index]
        seen = self.path(candle)[: self.sub + 1]
        partial = Candle(candle.open_time, candle.open, max(seen), min(seen), seen[-1],
                         candle.volume * (self.sub + 1) / SUBTICKS)
        self.sub += 1
        if self.sub == SUBTICKS:
            self.index, self.sub = self.index + 1, 0
        return seen[-1], partial
