"""What the dashboard shows of the Phoenix 95 model and of the last backtest (data only).

The model's provenance comes from its JSON file (the one brain loads); the last backtest
from ``docs/backtest_last.json`` and ``docs/backtest_equity.png`` written by
``scripts/backtest.py`` (``PHOENIX_BACKTEST_DIR`` points elsewhere).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from nameko_services.brain.model import DEFAULT_MODEL_PATH, ModelFileError, PhoenixModel

ROOT = Path(__file__).resolve().parents[1]
BACKTEST_DIR_ENV = "PHOENIX_BACKTEST_DIR"


def model_path(configured: str) -> Path:
    """``phoenix_95.model_path`` resolved as brain resolves it (empty = the shipped file)."""
    if not configured:
        return DEFAULT_MODEL_PATH
    path = Path(configured)
    return path if path.is_absolute() else ROOT / path


@dataclass(frozen=True)
class ModelView:
    provenance: dict[str, Any]
    data: pd.DataFrame  # one row per data file
    scores: pd.DataFrame  # walk-forward scores per symbol and pooled


def model_view(path: Path) -> ModelView | None:
    try:
        model = PhoenixModel.load(path)
    except ModelFileError:
        return None
    prov = model.provenance()
    data = pd.DataFrame(prov["data"] if isinstance(prov["data"], list) else [])
    ev = model.meta.get("evaluation", {})
    rows = [{"series": k, **v} for k, v in ev.get("per_symbol", {}).items()]
    if "pooled" in ev:
        rows.append({"series": "pooled", **ev["pooled"]})
    cols = ["series", "n", "observed_rate", "brier_model", "brier_base_rate", "log_loss_model",
            "log_loss_base_rate", "auc", "n_gated", "win_rate_gated", "win_rate_top_decile"]
    scores = pd.DataFrame(rows)
    scores = scores[[c for c in cols if c in scores.columns]] if rows else scores
    return ModelView(prov, data, scores)


@dataclass(frozen=True)
class BacktestView:
    meta: dict[str, Any]
    table: pd.DataFrame
    png: Path | None


def backtest_dir() -> Path:
    return Path(os.environ.get(BACKTEST_DIR_ENV, str(ROOT / "docs")))


def backtest_view(folder: Path) -> BacktestView | None:
    path = folder / "backtest_last.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    rows = []
    for key, r in saved.get("results", {}).items():
        strat, _, variant = key.partition(" | ")
        rows.append({"strategy": strat, "variant": variant,
                     **{k: v for k, v in r.items() if not isinstance(v, dict)}})
    png = folder / "backtest_equity.png"
    return BacktestView(saved.get("meta", {}), pd.DataFrame(rows), png if png.exists() else None)
