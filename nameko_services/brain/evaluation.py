"""Walk-forward evaluation of the Phoenix 95 model: out-of-sample scores in time order.

The held-out period is cut into consecutive folds. Each fold's model is fitted (and its
regularisation selected) only on entries that ended before the fold starts: training
entries whose label window reaches into the fold (``purge_ms``, the label horizon) are
dropped, so no price of the fold leaks into its model. The folds' predictions together
are the out-of-sample record that is scored against the base rate, pooled and per symbol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nameko_services.brain.engine import payoff
from nameko_services.brain.history import iso
from nameko_services.brain.training import (
    Array,
    Dataset,
    brier,
    fit_selected,
    log_loss,
    predict,
    reliability,
)
from shared.money import break_even_probability
from shared.settings import Settings


def auc(p: Array, y: Array) -> float:
    """Area under the ROC curve (Mann-Whitney, ties averaged); 0.5 = no ranking skill."""
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    sorted_p = p[order]
    starts = np.flatnonzero(np.r_[True, sorted_p[1:] != sorted_p[:-1]])
    ends = np.r_[starts[1:], len(p)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def gate_mask(p: Array, settings: Settings) -> Array:
    """Entries the three gates and Kelly would take if the model's ``p_market`` were the
    whole story (no alert: the claim is the model's own, no track record yet)."""
    p95 = settings.phoenix_95
    final = np.minimum(1.0, (p95.weight * p + (1 - p95.weight) * p) * p95.multiplier)
    # Kelly's f* > 0 exactly above the break-even probability (fees included)
    edge = p > float(break_even_probability(payoff(settings)))
    ok = (p >= p95.threshold) & (final >= p95.execute_threshold)
    if settings.trading.sizing == "kelly":
        ok &= edge
    return np.asarray(ok & (p >= settings.trading.min_confidence))


def scores(p: Array, y: Array, ret: Array | None, base_rate: float, gated: Array
           ) -> dict[str, Any]:
    """Brier, log-loss and AUC against the base rate; the taken brackets vs all of them."""
    base = np.full_like(y, base_rate)
    out: dict[str, Any] = {
        "n": int(len(y)), "base_rate_fit": base_rate, "observed_rate": float(y.mean()),
        "brier_model": brier(p, y), "brier_base_rate": brier(base, y),
        "log_loss_model": log_loss(p, y), "log_loss_base_rate": log_loss(base, y),
        "auc": auc(p, y), "p_mean": float(p.mean()), "p_min": float(p.min()),
        "p_max": float(p.max()),
        "win_rate_all": float(y.mean()), "n_gated": int(gated.sum()),
        "win_rate_gated": float(y[gated].mean()) if gated.any() else None,
    }
    top = p >= np.quantile(p, 0.9)
    out["win_rate_top_decile"] = float(y[top].mean())
    if ret is not None:
        out["mean_net_return_all"] = float(ret.mean())
        out["mean_net_return_gated"] = float(ret[gated].mean()) if gated.any() else None
        out["mean_net_return_top_decile"] = float(ret[top].mean())
    return out


@dataclass(frozen=True)
class WalkForward:
    test: Dataset  # every out-of-sample entry, in fold order
    p: Array  # its out-of-sample probability
    base: Array  # the base rate of the fold's training data, per entry
    folds: list[dict[str, Any]]


def fold_masks(time: Array, *, test_fraction: float, folds: int, purge_ms: float
               ) -> list[tuple[float, Array, Array]]:
    """(test start, train mask, test mask) per fold. The test periods tile the latest
    ``test_fraction`` of the entries in time; a fold trains only on entries that started
    ``purge_ms`` (the label horizon) or more before its test period, so every training
    label was decided before the first test entry."""
    cut = float(np.quantile(time, 1.0 - test_fraction))
    edges = np.linspace(cut, float(time.max()) + 1, folds + 1)
    return [(float(a), np.asarray(time < a - purge_ms), np.asarray((time >= a) & (time < b)))
            for a, b in zip(edges[:-1], edges[1:], strict=True)]


def walk_forward(data: Dataset, *, test_fraction: float, folds: int, purge_ms: float
                 ) -> WalkForward:
    tests: list[Dataset] = []
    ps: list[Array] = []
    bases: list[Array] = []
    info: list[dict[str, Any]] = []
    for a, train_mask, test_mask in fold_masks(data.time, test_fraction=test_fraction,
                                               folds=folds, purge_ms=purge_ms):
        train, test = data.take(train_mask), data.take(test_mask)
        if len(test.y) == 0 or len(train.y) == 0:
            continue
        model, selection = fit_selected(train, embargo_ms=purge_ms)
        tests.append(test)
        ps.append(predict(model, test.x))
        bases.append(np.full(len(test.y), float(train.y.mean())))
        info.append({"train_from": iso(float(train.time.min())),
                     "train_to": iso(float(train.time.max())), "test_from": iso(a),
                     "test_to": iso(float(test.time.max())), "n_train": int(len(train.y)),
                     "n_test": int(len(test.y)), "selected": selection["selected"]})
    if not tests:
        raise ValueError("not enough history for a walk-forward split")
    test = Dataset(np.concatenate([t.x for t in tests]), np.concatenate([t.y for t in tests]),
                   np.concatenate([t.time for t in tests]),
                   np.concatenate([t.group for t in tests if t.group is not None]),
                   np.concatenate([t.ret for t in tests if t.ret is not None]))
    return WalkForward(test, np.concatenate(ps), np.concatenate(bases), info)


def report(wf: WalkForward, names: list[str], settings: Settings) -> dict[str, Any]:
    """Pooled and per-symbol out-of-sample scores, with the pooled reliability table."""
    t = wf.test
    gated = gate_mask(wf.p, settings)
    base_rate = float(np.mean(wf.base))
    pooled = scores(wf.p, t.y, t.ret, base_rate, gated)
    pooled["reliability"] = reliability(wf.p, t.y)
    per_symbol: dict[str, Any] = {}
    assert t.group is not None
    for g, name in enumerate(names):
        m = t.group == g
        if m.sum() >= 50:
            per_symbol[name] = scores(wf.p[m], t.y[m], None if t.ret is None else t.ret[m],
                                      base_rate, gated[m])
            per_symbol[name]["reliability"] = reliability(wf.p[m], t.y[m])
    return {"pooled": pooled, "per_symbol": per_symbol, "folds": wf.folds}
