"""Phoenix 95 market features, computed the same way at training time and at run time.

Every indicator is computed over a whole series (numpy, vectorised) so that
``scripts/train_phoenix.py`` builds one feature row per historical bar and the brain takes
the last row of the same computation on the klines it fetched: the model is scored on
exactly what it was fitted on.

Directional features are multiplied by the side (+1 long, -1 short), so one model serves
both sides: a positive value always means "the market agrees with this trade".

* ``trend_fast`` / ``trend_slow``: (EMA12 - EMA48) / ATR14 on the entry timeframe (5m) and
  on the higher timeframe (1h) - trend on two timeframes, in units of volatility;
* ``rsi``: (RSI14 - 50) / 50 on 5m;
* ``macd``: MACD(12, 26, 9) histogram / ATR14 on 5m;
* ``bollinger``: (close - SMA20) / (2 * stdev20) on 5m, the position in the band;
* ``atr_bracket``: ATR14 / close divided by the stop distance - the volatility regime
  relative to the bracket width (not signed);
* ``volume``: log(volume / mean volume of the previous 20 bars) - the volume anomaly
  (not signed);
* ``side``: +1 long, -1 short, so a persistent drift can be learnt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FAST_TIMEFRAME = "5m"
SLOW_TIMEFRAME = "1h"
FAST_MS = 5 * 60_000
SLOW_MS = 60 * 60_000
# Candles fetched per timeframe (the feed keeps 300 closed ones). Indicators are EMAs seeded
# at the first candle; after 300 candles the seed's weight in the slowest one (EMA48) is
# (47/49)**300 ~ 4e-6, so a live row equals the training row of the same bar computed on
# the whole history to 1e-3 or 0.5 % in a long trend
# (tests/unit/brain/test_phoenix_training_properties.py).
KLINE_LIMIT = 300
WARMUP = 60  # bars before a feature row is trusted (training skips them)

FEATURE_NAMES: tuple[str, ...] = (
    "trend_fast", "trend_slow", "rsi", "macd", "bollinger", "atr_bracket", "volume", "side",
)
SIGNED = frozenset({"trend_fast", "trend_slow", "rsi", "macd", "bollinger"})
CLIP = 5.0

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Candles:
    """OHLCV columns, oldest first; ``open_time`` in epoch milliseconds."""

    open_time: Array
    open: Array
    high: Array
    low: Array
    close: Array
    volume: Array

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[float]]) -> Candles:
        """From ccxt ``fetch_ohlcv`` rows ``[ts, open, high, low, close, volume]``."""
        a = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
        return cls(a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4], a[:, 5])

    def __len__(self) -> int:
        return int(self.close.shape[0])

    def head(self, n: int) -> Candles:
        return Candles(self.open_time[:n], self.open[:n], self.high[:n], self.low[:n],
                       self.close[:n], self.volume[:n])

    def resample(self, period_ms: int) -> Candles:
        """Aggregate into ``period_ms`` buckets aligned on the epoch (Binance's alignment)."""
        bucket = self.open_time - np.mod(self.open_time, period_ms)
        starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
        ends = np.r_[starts[1:], len(self)]
        return Candles(
            bucket[starts], self.open[starts],
            np.maximum.reduceat(self.high, starts), np.minimum.reduceat(self.low, starts),
            self.close[ends - 1], np.add.reduceat(self.volume, starts),
        )


def ema(values: Array, span: int) -> Array:
    # a plain-float loop: the recurrence is sequential, and Python floats are the same
    # IEEE doubles as numpy's but several times faster to step through one by one
    alpha = 2.0 / (span + 1)
    beta = 1 - alpha
    out: list[float] = []
    append = out.append
    acc = float(values[0]) if len(values) else 0.0
    for v in values.tolist():
        acc = alpha * v + beta * acc
        append(acc)
    return np.asarray(out, dtype=np.float64)


def _rolling_mean(values: Array, n: int) -> Array:
    """Mean of the last ``n`` values at every index (fewer at the start of the series)."""
    csum = np.cumsum(np.r_[0.0, values])
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - n)
    return np.asarray((csum[idx] - csum[lo]) / (idx - lo), dtype=np.float64)


def atr(c: Candles, n: int = 14) -> Array:
    prev = np.r_[c.close[0], c.close[:-1]]
    tr = np.maximum(c.high - c.low, np.maximum(abs(c.high - prev), abs(c.low - prev)))
    return ema(tr, 2 * n - 1)  # Wilder's smoothing = EMA with span 2n-1


def rsi(close: Array, n: int = 14) -> Array:
    diff = np.diff(close, prepend=close[0])
    up = ema(np.maximum(diff, 0.0), 2 * n - 1)
    down = ema(np.maximum(-diff, 0.0), 2 * n - 1)
    total = up + down
    return np.where(total > 0, 100.0 * up / np.where(total > 0, total, 1.0), 50.0)


def _safe_div(num: Array, den: Array) -> Array:
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def _trend(c: Candles) -> Array:
    return _safe_div(ema(c.close, 12) - ema(c.close, 48), atr(c))


def unsigned_features(fast: Candles, slow: Candles, stop_pct: float) -> dict[str, Array]:
    """Feature columns for every bar of ``fast`` before signing by side.

    ``slow`` holds completed higher-timeframe bars; each fast bar sees the last slow bar
    that had closed by the fast bar's close, never a later one.
    """
    close = fast.close
    a = atr(fast)
    hist_line = ema(close, 12) - ema(close, 26)
    macd_hist = hist_line - ema(hist_line, 9)
    sma = _rolling_mean(close, 20)
    var = np.maximum(_rolling_mean(close * close, 20) - sma * sma, 0.0)
    band = 2.0 * np.sqrt(var)
    prev_vol = np.r_[fast.volume[0], _rolling_mean(fast.volume, 20)[:-1]]
    vol_ratio = _safe_div(fast.volume, prev_vol)
    slow_trend = _trend(slow) if len(slow) else np.zeros(0)
    fast_close_time = fast.open_time + FAST_MS
    slow_close_time = slow.open_time + SLOW_MS
    idx = np.searchsorted(slow_close_time, fast_close_time, side="right") - 1
    trend_slow = np.where(idx >= 0, slow_trend[np.maximum(idx, 0)] if len(slow) else 0.0, 0.0)
    cols = {
        "trend_fast": _trend(fast),
        "trend_slow": trend_slow,
        "rsi": (rsi(close) - 50.0) / 50.0,
        "macd": _safe_div(macd_hist, a),
        "bollinger": _safe_div(close - sma, band),
        "atr_bracket": _safe_div(a, close) / stop_pct,
        "volume": np.log(np.where(vol_ratio > 0, vol_ratio, 1.0)),
    }
    return {k: np.clip(v, -CLIP, CLIP) for k, v in cols.items()}


def signed_row(unsigned: dict[str, Array], i: int, side_sign: int) -> dict[str, float]:
    """One bar's feature vector for a trade on ``side_sign`` (+1 long, -1 short)."""
    row = {k: float(v[i]) * (side_sign if k in SIGNED else 1) for k, v in unsigned.items()}
    row["side"] = float(side_sign)
    return {name: round(row[name], 6) for name in FEATURE_NAMES}


def signed_matrix(unsigned: dict[str, Array], idx: npt.NDArray[np.intp],
                  side_sign: int) -> Array:
    """The rows ``idx`` as a matrix, column order FEATURE_NAMES: ``signed_row`` for many bars
    at once (the same numbers, rounded the same way)."""
    cols = []
    for name in FEATURE_NAMES:
        if name == "side":
            cols.append(np.full(len(idx), float(side_sign)))
        else:
            col = unsigned[name][idx] * (side_sign if name in SIGNED else 1)
            cols.append(np.round(col, 6))
    return np.stack(cols, axis=1) if len(idx) else np.zeros((0, len(FEATURE_NAMES)))


def completed(rows: Sequence[Sequence[float]], period_ms: int, now_ms: int) -> Candles:
    """Klines as returned by the exchange, without the bar still forming at ``now_ms``."""
    candles = Candles.from_rows(rows)
    done = candles.open_time + period_ms <= now_ms
    return candles.head(int(np.count_nonzero(done))) if not done.all() else candles


def live_features(fast_rows: Sequence[Sequence[float]], slow_rows: Sequence[Sequence[float]],
                  side_sign: int, stop_pct: float, now_ms: int) -> dict[str, float]:
    """The feature vector for a trade decided now, from recent klines of two timeframes."""
    fast = completed(fast_rows, FAST_MS, now_ms)
    slow = completed(slow_rows, SLOW_MS, now_ms)
    if len(fast) < 2:
        raise ValueError(f"need at least 2 completed {FAST_TIMEFRAME} klines, got {len(fast)}")
    return signed_row(unsigned_features(fast, slow, stop_pct), len(fast) - 1, side_sign)
