"""Fitting the Phoenix 95 model: label history by its bracket outcome, fit, evaluate.

Used by ``scripts/train_phoenix.py`` and the model's property tests. Needs scikit-learn
(pinned in requirements.txt); the brain itself only reads the JSON this produces.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from nameko_services.brain.features import (
    FEATURE_NAMES,
    SLOW_MS,
    WARMUP,
    Array,
    Candles,
    signed_matrix,
    unsigned_features,
)
from nameko_services.brain.model import PhoenixModel

DEFAULT_HORIZON = 864  # 5m bars = 3 days; entries unresolved by then are not labelled


def bracket_outcomes(c: Candles, tp_pct: float, sl_pct: float, side_sign: int,
                     horizon: int = DEFAULT_HORIZON, fee: float = 0.0) -> tuple[Array, Array]:
    """(label, net return) of a trade entered at bar i's close with a TP/SL bracket.

    The bracket is watched from bar i+1 on, for ``horizon`` bars. The first bar that touches
    either level decides; a bar that touches both counts as the stop (the order of prices
    inside a bar is unknown: assume the worst). A stop gapped through (the bar opens beyond
    it) exits at the open; a take-profit never fills better than its price. ``fee`` is the
    taker fee per side, on the notional at entry and at exit. Label 1.0 when the net return
    is positive, 0.0 otherwise, NaN (and return NaN) when neither level is hit in time.
    """
    n = len(c)
    label, net = np.full(n, np.nan), np.full(n, np.nan)
    up_hit, down_hit = (c.high, c.low) if side_sign > 0 else (c.low, c.high)
    for i in range(n - 1):
        entry = c.close[i]
        tp = entry * (1 + side_sign * tp_pct)
        sl = entry * (1 - side_sign * sl_pct)
        lo = i + 1
        end = min(n, i + 1 + horizon)
        while lo < end:  # growing windows: most brackets resolve within a day
            hi_ = min(end, lo + 288)
            if side_sign > 0:
                tp_hit, sl_hit = up_hit[lo:hi_] >= tp, down_hit[lo:hi_] <= sl
            else:
                tp_hit, sl_hit = up_hit[lo:hi_] <= tp, down_hit[lo:hi_] >= sl
            either = tp_hit | sl_hit
            if either.any():
                k = int(np.argmax(either))
                if sl_hit[k]:
                    gap = (c.open[lo + k] - sl) * side_sign < 0
                    exit_ = c.open[lo + k] if gap else sl
                else:
                    exit_ = tp
                gross = side_sign * (exit_ - entry) / entry
                net[i] = gross - fee * (1.0 + exit_ / entry)
                label[i] = 1.0 if net[i] > 0 else 0.0
                break
            lo = hi_
    return label, net


def bracket_labels(c: Candles, tp_pct: float, sl_pct: float, side_sign: int,
                   horizon: int = DEFAULT_HORIZON, fee: float = 0.0) -> Array:
    """1.0 if the bracket ends in a net profit (TP first), 0.0 if not, NaN if unresolved."""
    return bracket_outcomes(c, tp_pct, sl_pct, side_sign, horizon, fee)[0]


@dataclass(frozen=True)
class Dataset:
    x: Array  # (n, len(FEATURE_NAMES))
    y: Array  # (n,) 0/1
    time: Array  # entry bar open time, for the chronological split
    group: Array | None = None  # index of the series (symbol) each entry comes from
    ret: Array | None = None  # net return of the bracket (fees included)

    def take(self, mask: np.ndarray[Any, Any]) -> Dataset:
        return Dataset(self.x[mask], self.y[mask], self.time[mask],
                       None if self.group is None else self.group[mask],
                       None if self.ret is None else self.ret[mask])

    def split(self, test_fraction: float, embargo_ms: float = 0.0
              ) -> tuple[Dataset, Dataset]:
        """Train on the earlier period, test on the later one. Training entries within
        ``embargo_ms`` of the cut are dropped: their labels were decided by prices of the
        test period, and keeping them would leak it into the fit."""
        cut = float(np.quantile(self.time, 1.0 - test_fraction))
        return self.take(self.time < cut - embargo_ms), self.take(self.time >= cut)


def build_dataset(series: list[Candles], tp_pct: float, sl_pct: float,
                  horizon: int = DEFAULT_HORIZON, stride: int = 1, fee: float = 0.0,
                  slow: list[Candles | None] | None = None) -> Dataset:
    """One long and one short candidate entry every ``stride`` bars of every series.

    ``slow`` gives each series' higher-timeframe candles (default: its own 5m bars
    aggregated); features are the live brain's, computed by the same functions."""
    xs: list[Array] = []
    ys: list[Array] = []
    ts: list[Array] = []
    gs: list[Array] = []
    rs: list[Array] = []
    for g, fast in enumerate(series):
        higher = (slow[g] if slow else None) or fast.resample(SLOW_MS)
        # only completed higher-timeframe bars: unsigned_features aligns by close time
        cols = unsigned_features(fast, higher, sl_pct)
        idx = np.arange(WARMUP, len(fast), stride)
        for side in (1, -1):
            labels, net = bracket_outcomes(fast, tp_pct, sl_pct, side, horizon, fee)
            keep = idx[~np.isnan(labels[idx])]
            xs.append(signed_matrix(cols, keep, side))
            ys.append(labels[keep])
            ts.append(fast.open_time[keep])
            gs.append(np.full(len(keep), float(g)))
            rs.append(net[keep])
    if not xs:
        empty = np.zeros(0)
        return Dataset(np.zeros((0, len(FEATURE_NAMES))), empty, empty, empty, empty)
    return Dataset(np.concatenate(xs), np.concatenate(ys), np.concatenate(ts),
                   np.concatenate(gs), np.concatenate(rs))


def fit(train: Dataset, *, c_reg: float = 0.1, version_tag: str = "",
        meta: dict[str, Any] | None = None) -> PhoenixModel:
    """L2-regularised logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression

    mean = train.x.mean(axis=0)
    scale = train.x.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = (train.x - mean) / scale
    clf = LogisticRegression(C=c_reg, max_iter=1000)
    clf.fit(z, train.y)
    coef = tuple(round(float(w), 8) for w in clf.coef_[0])
    intercept = round(float(clf.intercept_[0]), 8)
    digest = hashlib.sha256(json.dumps([coef, intercept]).encode()).hexdigest()[:8]
    return PhoenixModel(
        version=f"phoenix95-lr-{version_tag + '-' if version_tag else ''}{digest}",
        features=FEATURE_NAMES,
        mean=tuple(round(float(v), 8) for v in mean),
        scale=tuple(round(float(v), 8) for v in scale),
        coef=coef, intercept=intercept, base_rate=round(float(train.y.mean()), 6),
        meta=meta or {},
    )


C_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


def fit_selected(train: Dataset, *, embargo_ms: float = 0.0, validation_fraction: float = 0.3,
                 version_tag: str = "", meta: dict[str, Any] | None = None
                 ) -> tuple[PhoenixModel, dict[str, Any]]:
    """Pick the regularisation by walk-forward validation inside the training period, with
    "no model" (the base rate alone) as one of the candidates; refit on all of ``train``.

    When no regularisation beats the base rate on the later part of the training period,
    the model *is* the base rate (every coefficient 0): it does not invent an edge."""
    inner, valid = train.split(validation_fraction, embargo_ms=embargo_ms)
    base = float(inner.y.mean())
    scores: dict[str, float] = {"base_rate": log_loss(np.full_like(valid.y, base), valid.y)}
    for c in C_GRID:
        scores[str(c)] = log_loss(predict(fit(inner, c_reg=c), valid.x), valid.y)
    best = min(scores, key=lambda k: scores[k])
    selection = {"validation_log_loss": scores, "selected": best}
    meta = {**(meta or {}), "selection": selection}
    if best == "base_rate":
        return base_rate_model(train, version_tag=version_tag, meta=meta), selection
    return fit(train, c_reg=float(best), version_tag=version_tag, meta=meta), selection


def base_rate_model(train: Dataset, *, version_tag: str = "",
                    meta: dict[str, Any] | None = None) -> PhoenixModel:
    rate = min(max(float(train.y.mean()), 1e-6), 1 - 1e-6)
    n = len(FEATURE_NAMES)
    intercept = round(math.log(rate / (1 - rate)), 8)
    digest = hashlib.sha256(json.dumps(["base", intercept]).encode()).hexdigest()[:8]
    return PhoenixModel(
        version=f"phoenix95-lr-{version_tag + '-' if version_tag else ''}{digest}",
        features=FEATURE_NAMES, mean=(0.0,) * n, scale=(1.0,) * n, coef=(0.0,) * n,
        intercept=intercept, base_rate=round(rate, 6), meta=meta or {},
    )


def predict(model: PhoenixModel, x: Array) -> Array:
    z = model.intercept + ((x - np.asarray(model.mean)) / np.asarray(model.scale)) @ np.asarray(
        model.coef)
    return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)


def brier(p: Array, y: Array) -> float:
    return float(np.mean((p - y) ** 2))


def log_loss(p: Array, y: Array) -> float:
    q = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def reliability(p: Array, y: Array, bins: int = 10) -> list[dict[str, float]]:
    """Per probability bin: mean prediction, observed frequency, count."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        mask = idx == b
        if mask.any():
            out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]),
                        "mean_p": float(p[mask].mean()), "observed": float(y[mask].mean()),
                        "count": float(mask.sum())})
    return out


def evaluate(model: PhoenixModel, train: Dataset, test: Dataset) -> dict[str, Any]:
    """Brier and log-loss of the model vs the base rate (learnt on train) on the test set."""
    p = predict(model, test.x)
    base = np.full_like(test.y, float(train.y.mean()))
    return {
        "n_train": int(len(train.y)), "n_test": int(len(test.y)),
        "base_rate_train": float(train.y.mean()), "base_rate_test": float(test.y.mean()),
        "brier_model": brier(p, test.y), "brier_base_rate": brier(base, test.y),
        "log_loss_model": log_loss(p, test.y), "log_loss_base_rate": log_loss(base, test.y),
        "p_mean": float(p.mean()), "p_min": float(p.min()), "p_max": float(p.max()),
        "reliability": reliability(p, test.y),
    }


def candles_from_csv_rows(rows: list[dict[str, str]]) -> dict[str, Candles]:
    """``symbol,open_time,open,high,low,close,volume`` rows -> one series per symbol."""
    by_symbol: dict[str, list[list[float]]] = {}
    for r in rows:
        by_symbol.setdefault(r["symbol"], []).append(
            [float(r["open_time"]), float(r["open"]), float(r["high"]), float(r["low"]),
             float(r["close"]), float(r["volume"])])
    return {s: Candles.from_rows(sorted(v)) for s, v in by_symbol.items()}


def synthetic_market(n: int, seed: int, *, momentum: float = 0.0, sigma: float = 0.004,
                     persistence: float = 0.995, start_ms: int = 1_700_000_000_000,
                     period_ms: int = 300_000) -> Candles:
    """5m candles of a random walk (``momentum`` = 0) or of a market with planted momentum:
    a hidden drift that persists (AR(1), ``persistence`` per bar) with a stationary standard
    deviation of ``momentum * sigma`` per bar - trends that last, which trend and
    momentum features can detect. Seeded: the same arguments give the same candles."""
    rng = np.random.default_rng(seed)
    shocks = rng.normal(0.0, sigma, n)
    innovations = rng.normal(0.0, momentum * sigma * math.sqrt(1 - persistence ** 2), n)
    drift = np.empty(n)
    acc = 0.0
    for i in range(n):
        acc = persistence * acc + innovations[i]
        drift[i] = acc
    close = 100.0 * np.exp(np.cumsum(drift + shocks))
    open_ = np.r_[100.0, close[:-1]]
    wick = np.abs(rng.normal(0.0, sigma * 0.3, (2, n)))
    high = np.maximum(open_, close) * (1 + wick[0])
    low = np.minimum(open_, close) * (1 - wick[1])
    volume = rng.lognormal(0.0, 0.3, n) * 1000
    times = start_ms + np.arange(n, dtype=np.float64) * period_ms
    return Candles(times, open_, high, low, close, volume)
