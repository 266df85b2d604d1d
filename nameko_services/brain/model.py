"""The fitted Phoenix 95 model: a logistic regression read from a JSON file.

The file is written by ``scripts/train_phoenix.py``; the brain needs no machine-learning
library at run time, only the coefficients. The probability it returns is the estimated
chance that the bracket (TP +2 % before SL -2 %) of a trade entered now ends in profit.

The alert's own confidence and the strategy's track record then move it. The strategy's
claimed confidence, shifted by the market model's estimated edge, is the mean of a Beta
prior worth ``prior_strength`` pseudo-trades,

    m = clip(confidence + (p_market - base_rate))

updated with the strategy's closed wins and losses on this symbol and side (Beta-binomial):

    p = (prior_strength * m + wins) / (prior_strength + wins + losses)

So a new strategy is taken at its word, tilted by what the market says; after many trades
its real win rate dominates and an over-confident strategy is marked down. Without an
alert confidence (``confidence=None``) the prior mean is ``p_market`` itself.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nameko_services.brain.features import FEATURE_NAMES

log = logging.getLogger(__name__)
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "model" / "phoenix95_model.json"
TRACK_WINS = "track_wins"
TRACK_LOSSES = "track_losses"
P_MARKET = "p_market"


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class ModelFileError(ValueError):
    """The model file is missing, malformed, or does not match the feature set."""


@dataclass(frozen=True)
class PhoenixModel:
    version: str
    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    base_rate: float
    prior_strength: float = 20.0
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        n = len(self.features)
        if not (len(self.mean) == len(self.scale) == len(self.coef) == n):
            raise ModelFileError("features, mean, scale and coef must have the same length")
        missing = set(self.features) - set(FEATURE_NAMES)
        if missing:
            raise ModelFileError(f"model uses features this brain does not compute: {missing}")
        if any(s <= 0 for s in self.scale):
            raise ModelFileError("every scale must be positive")

    # --- scoring ---
    def market_probability(self, features: dict[str, float]) -> float:
        z = self.intercept
        for name, mu, sd, w in zip(self.features, self.mean, self.scale, self.coef,
                                   strict=True):
            z += w * (float(features[name]) - mu) / sd
        return sigmoid(z)

    def prior_mean(self, features: dict[str, float], confidence: float | None = None) -> float:
        p_market = self.market_probability(features)
        if confidence is None:
            return p_market
        return min(0.99, max(0.01, confidence + (p_market - self.base_rate)))

    def probability(self, features: dict[str, float], confidence: float | None = None) -> float:
        """The model probability from a full feature vector (market + track record)."""
        m = self.prior_mean(features, confidence)
        wins = float(features.get(TRACK_WINS, 0.0))
        losses = float(features.get(TRACK_LOSSES, 0.0))
        k = self.prior_strength
        return (k * m + wins) / (k + wins + losses)

    # --- provenance ---
    def provenance(self) -> dict[str, Any]:
        """Where the model came from, in brief: data files and hashes, periods, metrics,
        library versions (the full record is ``meta``)."""
        m = self.meta
        pooled = m.get("evaluation", {}).get("pooled", m.get("evaluation", {}))
        metrics = {k: pooled[k] for k in ("n", "n_test", "brier_model", "brier_base_rate",
                                          "log_loss_model", "log_loss_base_rate", "auc")
                   if k in pooled}
        return {
            "version": self.version, "base_rate": self.base_rate,
            "shipped": m.get("shipped", "fitted"), "trained_at": m.get("trained_at"),
            "period": m.get("period"),
            "data": [{"file": d.get("file"), "sha256": str(d.get("sha256", ""))[:16],
                      "first": d.get("first"), "last": d.get("last")}
                     for d in m.get("data", [])] or m.get("source"),
            "walk_forward": metrics, "libraries": m.get("libraries"),
        }

    # --- file ---
    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version, "kind": "logistic_regression",
            "features": list(self.features), "mean": list(self.mean),
            "scale": list(self.scale), "coef": list(self.coef), "intercept": self.intercept,
            "base_rate": self.base_rate, "prior_strength": self.prior_strength,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> PhoenixModel:
        try:
            return cls(
                version=str(obj["version"]), features=tuple(obj["features"]),
                mean=tuple(float(x) for x in obj["mean"]),
                scale=tuple(float(x) for x in obj["scale"]),
                coef=tuple(float(x) for x in obj["coef"]), intercept=float(obj["intercept"]),
                base_rate=float(obj["base_rate"]),
                prior_strength=float(obj.get("prior_strength", 20.0)),
                meta=dict(obj.get("meta", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ModelFileError):
                raise
            raise ModelFileError(f"malformed model file: {exc!r}") from exc

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path = DEFAULT_MODEL_PATH) -> PhoenixModel:
        try:
            obj = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"cannot read model file {path}: {exc}") from exc
        model = cls.from_json(obj)
        log.info("Phoenix 95 model loaded from %s: %s", path,
                 json.dumps(model.provenance(), default=str))
        return model
