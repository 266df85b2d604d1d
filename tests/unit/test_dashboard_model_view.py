"""The dashboard's model and backtest page reads the model's provenance and the last run."""

from __future__ import annotations

import json

from dashboard.model_view import backtest_view, model_path, model_view
from nameko_services.brain.model import DEFAULT_MODEL_PATH


def test_the_shipped_models_provenance_is_shown_with_its_data_hashes():
    view = model_view(model_path(""))

    assert view is not None and model_path("") == DEFAULT_MODEL_PATH
    assert len(view.data) >= 1 and {"file", "sha256"} <= set(view.data.columns)
    assert "pooled" in set(view.scores["series"])


def test_an_unreadable_model_file_is_reported_not_raised(tmp_path):
    (tmp_path / "m.json").write_text("{")

    assert model_view(tmp_path / "m.json") is None


def test_the_last_backtest_is_a_table_of_strategy_and_variant(tmp_path):
    (tmp_path / "backtest_last.json").write_text(json.dumps({
        "meta": {"model": "m"}, "results": {"ema_cross | gates, Kelly": {
            "trades": 3, "win_rate": 0.5, "exits": {"take_profit": 1}}}}))

    view = backtest_view(tmp_path)

    assert view is not None and view.png is None
    assert view.table.to_dict("records") == [
        {"strategy": "ema_cross", "variant": "gates, Kelly", "trades": 3, "win_rate": 0.5}]
    assert backtest_view(tmp_path / "missing") is None
