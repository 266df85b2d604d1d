"""The fitted model: honest on a random walk, finds a planted edge, reproducible from file."""

from __future__ import annotations

import numpy as np
import pytest

from nameko_services.brain.features import (
    FAST_MS,
    FEATURE_NAMES,
    SLOW_MS,
    completed,
    live_features,
    signed_row,
    unsigned_features,
)
from nameko_services.brain.model import DEFAULT_MODEL_PATH, ModelFileError, PhoenixModel
from nameko_services.brain.training import (
    bracket_labels,
    build_dataset,
    evaluate,
    fit,
    fit_selected,
    predict,
    synthetic_market,
)
from tests.support.brain_fakes import rows


def _fit_on(momentum: float, seeds=(1, 2, 3)):
    series = [synthetic_market(5000, seed=s, momentum=momentum) for s in seeds]
    data = build_dataset(series, 0.02, 0.02, horizon=300)
    train, test = data.split(0.3, embargo_ms=300 * FAST_MS)
    model, _ = fit_selected(train, embargo_ms=300 * FAST_MS)
    return model, evaluate(model, train, test), test


def test_on_a_random_walk_the_model_stays_near_the_base_rate():
    model, ev, test = _fit_on(momentum=0.0)

    p = predict(model, test.x)
    assert abs(ev["p_mean"] - ev["base_rate_train"]) < 0.02
    assert float(np.mean(np.abs(p - ev["base_rate_train"]))) < 0.05
    assert ev["brier_model"] < ev["brier_base_rate"] * 1.01  # invents no edge


def test_on_planted_momentum_the_model_finds_the_edge():
    model, ev, _ = _fit_on(momentum=0.15)

    assert ev["brier_model"] < ev["brier_base_rate"] - 0.01
    assert ev["log_loss_model"] < ev["log_loss_base_rate"]
    coef = dict(zip(model.features, model.coef, strict=True))
    # with-trend entries are the profitable ones: momentum features carry positive weight
    assert coef["trend_fast"] + coef["macd"] + coef["rsi"] + coef["bollinger"] > 0


def test_bracket_label_is_whichever_of_tp_and_sl_is_hit_first():
    c = synthetic_market(5, seed=0)
    c.close[0] = 100.0
    c.high[1:], c.low[1:] = [101, 103, 101, 101], [99, 99, 97, 99]

    longs = bracket_labels(c, 0.02, 0.02, +1)
    shorts = bracket_labels(c, 0.02, 0.02, -1)

    assert (longs[0], shorts[0]) == (1.0, 0.0)


def test_bar_touching_both_tp_and_sl_counts_as_a_loss():
    c = synthetic_market(3, seed=0)
    c.close[0] = 100.0
    c.high[1], c.low[1] = 103.0, 97.0

    assert bracket_labels(c, 0.02, 0.02, +1)[0] == 0.0
    assert bracket_labels(c, 0.02, 0.02, -1)[0] == 0.0


def test_directional_features_flip_with_the_side():
    c = synthetic_market(300, seed=4, momentum=0.5)
    cols = unsigned_features(c, c.resample(SLOW_MS), 0.02)

    long, short = signed_row(cols, 250, +1), signed_row(cols, 250, -1)

    for name in ("trend_fast", "trend_slow", "rsi", "macd", "bollinger"):
        assert long[name] == -short[name]
    assert long["atr_bracket"] == short["atr_bracket"] and long["volume"] == short["volume"]
    assert (long["side"], short["side"]) == (1.0, -1.0)


def test_the_forming_bar_is_not_used():
    c = synthetic_market(200, seed=5)
    now_ms = int(c.open_time[-1]) + 1000  # the last bar opened one second ago

    assert len(completed(rows(c), FAST_MS, now_ms)) == len(c) - 1


def test_live_features_equal_the_training_row_of_the_same_bar():
    c = synthetic_market(400, seed=6)
    slow = c.resample(SLOW_MS)
    now_ms = int(c.open_time[-1]) + FAST_MS  # every bar has closed
    done_slow = completed(rows(slow), SLOW_MS, now_ms)

    live = live_features(rows(c), rows(slow), -1, 0.02, now_ms)
    trained = signed_row(unsigned_features(c, done_slow, 0.02), len(c) - 1, -1)

    assert live == trained


def test_model_file_round_trips_and_scores_the_same(tmp_path):
    data = build_dataset([synthetic_market(1500, seed=9, momentum=0.15)], 0.02, 0.02, 300)
    model, test = fit(data), data
    path = tmp_path / "m.json"

    model.save(path)
    loaded = PhoenixModel.load(path)

    row = dict(zip(FEATURE_NAMES, test.x[0].tolist(), strict=True))
    assert loaded.market_probability(row) == pytest.approx(float(predict(model, test.x[:1])[0]))
    assert loaded.version == model.version


def test_shipped_model_loads_with_a_version_and_its_evaluation():
    model = PhoenixModel.load(DEFAULT_MODEL_PATH)

    assert model.version.startswith("phoenix95-lr-")
    assert model.features == FEATURE_NAMES
    evaluation = model.meta["evaluation"]["pooled"]
    assert {"auc", "brier_model", "brier_base_rate", "log_loss_model",
            "log_loss_base_rate"} <= set(evaluation)


def test_shipped_model_carries_its_provenance():
    prov = PhoenixModel.load(DEFAULT_MODEL_PATH).provenance()

    assert prov["data"] and all(len(d["sha256"]) == 16 for d in prov["data"])
    assert prov["period"]["from"] < prov["period"]["to"]
    assert {"numpy", "scikit-learn", "python"} <= set(prov["libraries"])
    assert "auc" in prov["walk_forward"]


def test_a_malformed_model_file_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"version": "x", "features": ["nope"], "mean": [0], "scale": [1], '
                    '"coef": [0], "intercept": 0, "base_rate": 0.5}')

    with pytest.raises(ModelFileError, match="nope"):
        PhoenixModel.load(path)


def test_track_record_moves_the_probability_toward_the_strategy_win_rate():
    from tests.support.brain_fakes import constant_model

    model = constant_model(0.5, prior_strength=20)
    base = dict.fromkeys(FEATURE_NAMES, 0.0)

    none = model.probability(base)
    winning = model.probability({**base, "track_wins": 30.0, "track_losses": 10.0})
    losing = model.probability({**base, "track_wins": 2.0, "track_losses": 18.0})

    assert none == pytest.approx(0.5)
    assert winning == pytest.approx((10 + 30) / 60)
    assert losing == pytest.approx((10 + 2) / 40)


def test_on_the_paper_markets_random_walk_08_trades_and_06_does_not():
    """The e2e/README promise with the shipped model: on the simulated market an alert of
    confidence 0.8 clears the execute threshold and one of 0.6 does not, at every bar."""
    from pathlib import Path

    from nameko_services.brain.history import read_file
    from shared.settings import Phoenix95Settings

    paper = Path(DEFAULT_MODEL_PATH).parent / "paper_market_5m.csv"
    model = PhoenixModel.load(DEFAULT_MODEL_PATH)
    series = read_file(paper)[:4]
    data = build_dataset([s.candles for s in series], 0.02, 0.02, horizon=300)
    p95 = Phoenix95Settings()

    def final(confidence: float) -> np.ndarray:
        edge = predict(model, data.x) - model.base_rate
        p = np.clip(confidence + edge, 0.01, 0.99)
        return np.minimum(1.0, (p95.weight * p + (1 - p95.weight) * confidence)
                          * p95.multiplier)

    assert (final(0.8) >= p95.execute_threshold).all()
    assert (final(0.6) < p95.execute_threshold).all()


def test_loading_the_model_logs_its_provenance(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="nameko_services.brain.model"):
        model = PhoenixModel.load(DEFAULT_MODEL_PATH)

    assert model.version in caplog.text and "sha256" in caplog.text
