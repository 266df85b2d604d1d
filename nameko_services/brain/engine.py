"""Phoenix 95 analysis: score a signal, apply the three gates, size it with Kelly.

The three gates, in order (each with its own reason code):

1. ``trading.min_confidence`` (0.25) on the alert's *own* confidence - junk filter;
2. ``phoenix_95.threshold`` (0.45) on the Phoenix 95 score
   ``weight * model_probability + (1 - weight) * alert_confidence``;
3. ``phoenix_95.execute_threshold`` (0.85) on the final confidence
   ``min(1, phoenix_score * multiplier)`` - only these trade.

The model probability in this version is a transparent placeholder built from the
alert's confidence nudged by trend and momentum agreement on recent 1-minute klines;
the calibrated model replaces it (see docs/phoenix95.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from shared.models import Analysis, Signal, TradeIntent
from shared.money import bracket_prices, kelly_margin_fraction
from shared.settings import Settings

KLINE_TIMEFRAME = "1m"
KLINE_LIMIT = 60


class MarketView(Protocol):
    def closes(self, symbol: str) -> Sequence[float]: ...
    def last_price(self, symbol: str) -> Decimal: ...
    def equity(self) -> Decimal: ...
    def tick_size(self, symbol: str) -> Decimal: ...
    def amount_to_precision(self, symbol: str, quantity: Decimal) -> Decimal: ...


def ema(values: Sequence[float], span: int) -> float:
    alpha = 2.0 / (span + 1)
    out = values[0]
    for v in values[1:]:
        out = alpha * v + (1 - alpha) * out
    return out


@dataclass(frozen=True)
class Features:
    trend: float  # +1 fast EMA above slow, -1 below, scaled by separation
    momentum: float  # return over the last 15 bars, in units of 1%

    def as_dict(self) -> dict[str, float]:
        return {"trend": self.trend, "momentum": self.momentum}


def features_from_closes(closes: Sequence[float]) -> Features:
    if len(closes) < 20:
        return Features(0.0, 0.0)
    fast, slow = ema(closes, 9), ema(closes, 21)
    trend = max(-1.0, min(1.0, (fast - slow) / slow * 500)) if slow else 0.0
    base = closes[-16] if len(closes) >= 16 else closes[0]
    momentum = max(-1.0, min(1.0, (closes[-1] - base) / base * 100)) if base else 0.0
    return Features(trend, momentum)


def model_probability(confidence: float, side_sign: int, features: Features) -> float:
    nudge = 0.05 * side_sign * features.trend + 0.05 * side_sign * features.momentum
    return max(0.01, min(0.99, confidence + nudge))


class SizingError(ValueError):
    """The Kelly size rounds to nothing on this symbol; the message is the reason code."""


class BrainEngine:
    def __init__(self, settings: Settings, market: MarketView) -> None:
        self.settings = settings
        self.market = market

    def analyze(self, signal: Signal) -> Analysis:
        s, p95 = self.settings, self.settings.phoenix_95
        side_sign = 1 if signal.side == "LONG" else -1
        feats = features_from_closes(self.market.closes(signal.symbol))
        prob = model_probability(signal.confidence, side_sign, feats)
        score = p95.weight * prob + (1 - p95.weight) * signal.confidence
        final = min(1.0, score * p95.multiplier)
        reasons: list[str] = []
        if signal.side is None:
            reasons.append("not_an_entry")
        if signal.confidence < s.trading.min_confidence:
            reasons.append("confidence_below_min")
        if score < p95.threshold:
            reasons.append("phoenix_score_below_threshold")
        if final < p95.execute_threshold:
            reasons.append("final_confidence_below_execute_threshold")
        lev = s.leverage
        margin_fraction = kelly_margin_fraction(
            prob, lev.stop_loss_percent, lev.take_profit_percent, lev.leverage,
            s.trading.kelly_fraction, s.trading.max_position_size,
        )
        if margin_fraction <= 0:
            reasons.append("no_edge")
        return Analysis(
            signal_id=signal.signal_id,
            symbol=signal.symbol,
            side=signal.side,
            model_probability=round(prob, 6),
            phoenix_score=round(score, 6),
            final_confidence=round(final, 6),
            margin_fraction=round(margin_fraction, 6),
            decision="rejected" if reasons else "approved",
            reasons=tuple(reasons),
            features=feats.as_dict(),
        )

    def intent(self, signal: Signal, analysis: Analysis) -> TradeIntent:
        """Turn an approved analysis into a fully specified order for risk to check."""
        assert signal.side is not None
        lev = self.settings.leverage
        price = self.market.last_price(signal.symbol)
        margin = self.market.equity() * Decimal(str(analysis.margin_fraction))
        raw_qty = margin * lev.leverage / price
        quantity = self.market.amount_to_precision(signal.symbol, raw_qty)
        if quantity <= 0:
            raise SizingError("below_min_notional")
        stop, take = bracket_prices(
            signal.side, price, Decimal(str(lev.stop_loss_percent)),
            Decimal(str(lev.take_profit_percent)), self.market.tick_size(signal.symbol),
        )
        return TradeIntent(
            signal_id=signal.signal_id,
            idempotency_key=signal.idempotency_key,
            symbol=signal.symbol,
            side=signal.side,
            quantity=quantity,
            reference_price=price,
            alert_price=signal.price,
            leverage=lev.leverage,
            margin_mode=lev.margin_mode,
            stop_loss=stop,
            take_profit=take,
            margin=(quantity * price / lev.leverage).quantize(Decimal("0.0001")),
            strategy=signal.strategy,
        )
