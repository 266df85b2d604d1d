"""Phoenix 95 analysis: features, the model probability, the three gates, Kelly sizing.

The gates, in order (each with its own reason code):

1. ``trading.min_confidence`` (0.25) on the alert's own ``confidence``
   -> ``confidence_below_min``;
2. ``phoenix_95.threshold`` (0.45) on the model probability ``p`` (the estimated chance
   that the bracket ends in profit) -> ``phoenix_score_below_threshold``;
3. ``phoenix_95.execute_threshold`` (0.85) on the final confidence
   ``min(1, (weight * p + (1 - weight) * confidence) * multiplier)``
   -> ``final_confidence_below_execute_threshold``.

Then the size (``trading.sizing``): ``kelly`` - f* = p - (1 - p) / b with b = TP / SL;
margin = ``kelly_fraction`` * f* * equity (``no_edge`` when f* <= 0); ``fixed`` - margin =
``fixed_margin_fraction`` * equity. Both are capped at ``max_position_size`` of equity and
turned into quantity = margin * leverage / price, rounded down to the step size
(``below_min_notional`` when that is under the exchange minimum).

Klines, price and equity come from the feed's state; when the streams behind them are down
the signal is rejected with ``market_data_stale`` / ``account_state_stale`` instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from nameko_services.brain.features import (
    FAST_TIMEFRAME,
    KLINE_LIMIT,
    SLOW_TIMEFRAME,
    live_features,
)
from nameko_services.brain.model import P_MARKET, TRACK_LOSSES, TRACK_WINS, PhoenixModel
from nameko_services.brain.track_record import Record
from shared.models import Analysis, Signal, TradeIntent
from shared.money import bracket_prices
from shared.settings import Settings
from shared.state import StaleState


class MarketView(Protocol):
    def klines(self, symbol: str, timeframe: str, limit: int) -> Sequence[Sequence[float]]: ...
    def last_price(self, symbol: str) -> Decimal: ...
    def equity(self) -> Decimal: ...
    def tick_size(self, symbol: str) -> Decimal: ...
    def min_quantity(self, symbol: str) -> Decimal: ...
    def min_notional(self, symbol: str) -> Decimal: ...
    def amount_to_precision(self, symbol: str, quantity: Decimal) -> Decimal: ...


class TrackRecordView(Protocol):
    def get(self, strategy: str, symbol: str, side: str) -> Record: ...
    def remember(self, signal_id: str, strategy: str, symbol: str, side: str) -> None: ...


@dataclass(frozen=True)
class SizeResult:
    """The outcome of sizing: the audit dict, the intent (or None) and a reason if refused."""

    sizing: dict[str, Any]
    intent: TradeIntent | None
    reason: str | None


@dataclass(frozen=True)
class Decision:
    analysis: Analysis
    intent: TradeIntent | None  # set only when approved

    @property
    def approved(self) -> bool:
        return self.analysis.decision == "approved"


def kelly_f(p: float, payoff_ratio: float) -> float:
    """Full Kelly fraction ``p - (1 - p) / b`` (may be negative: no edge)."""
    return p - (1.0 - p) / payoff_ratio


def margin_fraction(settings: Settings, p: float) -> tuple[float, float, list[str]]:
    """(f*, margin as a fraction of equity, the caps that bound it) for the sizing mode."""
    t, lev = settings.trading, settings.leverage
    f_star = kelly_f(p, lev.take_profit_percent / lev.stop_loss_percent)
    if t.sizing == "fixed":
        raw = t.fixed_margin_fraction
    else:
        raw = max(0.0, t.kelly_fraction * f_star)
    bound_by: list[str] = []
    if raw > t.max_position_size:
        bound_by.append("max_position_size")
    return f_star, min(raw, t.max_position_size), bound_by


class BrainEngine:
    def __init__(self, settings: Settings, market: MarketView, model: PhoenixModel,
                 track: TrackRecordView, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.market = market
        self.model = model
        self.track = track
        self.clock = clock

    # --- features and probability ---
    def features(self, signal: Signal) -> dict[str, float]:
        """The full feature vector: market features of the signal's side + track record."""
        assert signal.side is not None
        side_sign = 1 if signal.side == "LONG" else -1
        fast = self.market.klines(signal.symbol, FAST_TIMEFRAME, KLINE_LIMIT)
        slow = self.market.klines(signal.symbol, SLOW_TIMEFRAME, KLINE_LIMIT)
        feats = live_features(fast, slow, side_sign, self.settings.leverage.stop_loss_percent,
                              int(self.clock() * 1000))
        record = self.track.get(signal.strategy, signal.symbol, signal.side)
        feats[TRACK_WINS] = float(record.wins)
        feats[TRACK_LOSSES] = float(record.losses)
        return feats

    # --- the decision ---
    def analyze(self, signal: Signal) -> Decision:
        if signal.side is None:
            return Decision(self._verdict(signal, {}, 0.0, {}, {}, ["not_an_entry"]), None)
        s, p95 = self.settings, self.settings.phoenix_95
        if signal.confidence < s.trading.min_confidence:
            # Gate 1 needs nothing but the alert: refusing before the features saves the
            # candle reads and indicators, most of an analysis (docs/performance.md).
            gate = {"min_confidence": _gate(signal.confidence, s.trading.min_confidence)}
            return Decision(self._verdict(signal, {}, 0.0, gate, {}, ["confidence_below_min"]),
                            None)
        try:
            feats = self.features(signal)
        except StaleState as exc:  # never analysed on state the feed no longer keeps
            return Decision(self._verdict(signal, {}, 0.0, {}, {"stale": exc.detail},
                                          [exc.reason]), None)
        except ValueError:  # too little kline history for this symbol (a new listing)
            return Decision(self._verdict(signal, {}, 0.0, {}, {},
                                          ["insufficient_market_data"]), None)
        claimed = signal.confidence if p95.confidence_prior else None
        p = self.model.probability(feats, claimed)
        feats[P_MARKET] = round(self.model.market_probability(feats), 6)
        feats["prior_mean"] = round(self.model.prior_mean(feats, claimed), 6)
        final = min(1.0, (p95.weight * p + (1 - p95.weight) * signal.confidence)
                    * p95.multiplier)
        gates = {
            "min_confidence": _gate(signal.confidence, s.trading.min_confidence),
            "phoenix_threshold": _gate(p, p95.threshold),
            "execute_threshold": _gate(final, p95.execute_threshold),
        }
        reasons = [code for code, g in zip(
            ("confidence_below_min", "phoenix_score_below_threshold",
             "final_confidence_below_execute_threshold"), gates.values(), strict=True)
            if not g["passed"]]
        f_star, fraction, bound_by = margin_fraction(s, p)
        sizing: dict[str, Any] = {
            "mode": s.trading.sizing, "p": round(p, 6), "kelly_f": round(f_star, 6),
            "payoff_ratio": s.leverage.take_profit_percent / s.leverage.stop_loss_percent,
            "margin_fraction": round(fraction, 6), "bound_by": bound_by,
        }
        if s.trading.sizing == "kelly" and f_star <= 0:
            reasons.append("no_edge")
        intent = None
        if not reasons:
            try:
                sized = self.size(signal, fraction, sizing)
            except StaleState as exc:
                sized = SizeResult({**sizing, "stale": exc.detail}, None, exc.reason)
            sizing, intent = sized.sizing, sized.intent
            if sized.reason:
                reasons.append(sized.reason)
        return Decision(self._verdict(signal, feats, final, gates, sizing, reasons),
                        intent if not reasons else None)

    def size(self, signal: Signal, fraction: float, sizing: dict[str, Any]) -> SizeResult:
        """Margin -> quantity at the current price, rounded down to the exchange's step."""
        assert signal.side is not None
        lev = self.settings.leverage
        symbol = signal.symbol
        price = self.market.last_price(symbol)
        equity = self.market.equity()
        margin = equity * Decimal(str(fraction))
        raw_qty = margin * lev.leverage / price if price > 0 else Decimal(0)
        quantity = self.market.amount_to_precision(symbol, raw_qty)
        min_qty, min_notional = self.market.min_quantity(symbol), self.market.min_notional(symbol)
        out = {**sizing, "equity": str(equity), "price": str(price), "margin": str(margin),
               "leverage": lev.leverage, "raw_quantity": str(raw_qty),
               "quantity": str(quantity), "min_quantity": str(min_qty),
               "min_notional": str(min_notional)}
        if quantity <= 0 or quantity < min_qty or quantity * price < min_notional:
            return SizeResult({**out, "quantity": "0"}, None, "below_min_notional")
        if quantity < raw_qty:
            out["bound_by"] = [*sizing.get("bound_by", []), "step_size"]
        stop, take = bracket_prices(
            signal.side, price, Decimal(str(lev.stop_loss_percent)),
            Decimal(str(lev.take_profit_percent)), self.market.tick_size(symbol),
        )
        intent = TradeIntent(
            signal_id=signal.signal_id, idempotency_key=signal.idempotency_key, symbol=symbol,
            side=signal.side, quantity=quantity, reference_price=price,
            alert_price=signal.price, leverage=lev.leverage, margin_mode=lev.margin_mode,
            stop_loss=stop, take_profit=take,
            margin=(quantity * price / lev.leverage).quantize(Decimal("0.0001")),
            strategy=signal.strategy, received_at=signal.received_at,
        )
        return SizeResult(out, intent, None)

    def timed_out(self, signal: Signal, elapsed: float) -> Analysis:
        """The verdict for a signal whose analysis ran past ``phoenix_95.analysis_timeout``."""
        return self._verdict(signal, {}, 0.0, {"analysis_timeout": {
            "value": round(elapsed, 3), "threshold": self.settings.phoenix_95.analysis_timeout,
            "passed": False}}, {}, ["analysis_timeout"])

    def _verdict(self, signal: Signal, feats: dict[str, float], final: float,
                 gates: dict[str, Any], sizing: dict[str, Any], reasons: list[str]) -> Analysis:
        p = float(gates.get("phoenix_threshold", {}).get("value", 0.0))
        weight = self.settings.phoenix_95.weight
        return Analysis(
            signal_id=signal.signal_id, symbol=signal.symbol, side=signal.side,
            model_probability=round(p, 6),
            phoenix_score=round(weight * p + (1 - weight) * signal.confidence, 6),
            final_confidence=round(final, 6),
            margin_fraction=float(sizing.get("margin_fraction", 0.0)) if not reasons else 0.0,
            decision="rejected" if reasons else "approved", reasons=tuple(reasons),
            features=feats, model_version=self.model.version, gates=gates, sizing=sizing,
        )


def _gate(value: float, threshold: float) -> dict[str, Any]:
    return {"value": round(value, 6), "threshold": threshold, "passed": value >= threshold}
