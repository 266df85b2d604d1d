"""Risk engine: the three-stage pre-trade check, as a pure function of its inputs.

Every denial carries a stable reason code; every number computed is returned in
``checks`` so a trader can see why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from shared.models import RiskDecision, TradeIntent, TradingState
from shared.money import Bracket, liquidation_price
from shared.settings import Settings

DAILY_LOSS = "daily_loss_limit"
DRAWDOWN = "max_drawdown"
BREACH_REASONS = (DAILY_LOSS, DRAWDOWN)  # denials that also halt trading


@dataclass(frozen=True)
class OpenPosition:
    symbol: str
    side: str
    margin: Decimal
    notional: Decimal


@dataclass(frozen=True)
class Snapshot:
    """What risk knows of the world when it checks one intent."""

    state: TradingState
    equity: Decimal
    available: Decimal
    positions: Sequence[OpenPosition]
    last_price: Decimal
    price_age_ms: int
    min_quantity: Decimal
    min_notional: Decimal
    brackets: Sequence[Bracket]
    reserved_margin: Decimal = Decimal(0)
    reserved_notional: Decimal = Decimal(0)
    reserved_count: int = 0
    reserved_symbols: frozenset[str] = frozenset()
    daily_loss_ratio: Decimal = Decimal(0)
    drawdown: Decimal = Decimal(0)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def exposure(self) -> Decimal:
        return sum((p.notional for p in self.positions), Decimal(0))


class RiskEngine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def check(self, intent: TradeIntent, snap: Snapshot) -> RiskDecision:
        reasons: list[str] = []
        checks: dict[str, object] = {}
        self._order_sanity(intent, snap, reasons, checks)
        self._account(intent, snap, reasons, checks)
        liq = self._market(intent, snap, reasons, checks)
        if snap.state != "ACTIVE":
            reasons.insert(0, snap.state.lower())  # "halted" | "reducing"
        return RiskDecision(signal_id=intent.signal_id, approved=not reasons,
                            reasons=tuple(reasons), checks=_jsonable(checks),
                            liquidation_price=liq)

    def _order_sanity(self, it: TradeIntent, snap: Snapshot, reasons: list[str],
                      checks: dict[str, object]) -> None:
        s = self.settings
        if it.symbol not in s.trading.allowed_symbols:
            reasons.append("symbol_not_allowed")
        if it.leverage > s.leverage.leverage:
            reasons.append("leverage_exceeded")
        if it.margin_mode.upper() != "ISOLATED":
            reasons.append("margin_mode_not_isolated")
        notional = it.quantity * it.reference_price
        checks.update(notional=notional, min_notional=snap.min_notional,
                      min_quantity=snap.min_quantity)
        if it.quantity < snap.min_quantity:
            reasons.append("quantity_below_minimum")
        if notional < snap.min_notional:
            reasons.append("below_min_notional")
        long = it.side == "LONG"
        if it.stop_loss is None or (it.stop_loss >= it.reference_price if long
                                    else it.stop_loss <= it.reference_price):
            reasons.append("stop_loss_missing_or_wrong_side")
        if it.take_profit is None or (it.take_profit <= it.reference_price if long
                                      else it.take_profit >= it.reference_price):
            reasons.append("take_profit_missing_or_wrong_side")

    def _account(self, it: TradeIntent, snap: Snapshot, reasons: list[str],
                 checks: dict[str, object]) -> None:
        t, r = self.settings.trading, self.settings.risk
        margin = it.quantity * it.reference_price / it.leverage
        notional = it.quantity * it.reference_price
        cap = snap.equity * Decimal(str(t.max_position_size))
        free = snap.available - snap.reserved_margin
        exposure = snap.exposure + snap.reserved_notional
        max_exposure = snap.equity * Decimal(str(r.max_total_exposure))
        open_count = len(snap.positions) + snap.reserved_count
        checks.update(margin=margin, equity=snap.equity, available=snap.available,
                      reserved_margin=snap.reserved_margin, max_margin=cap,
                      open_positions=len(snap.positions), reserved_positions=snap.reserved_count,
                      exposure=exposure, max_exposure=max_exposure,
                      daily_loss_ratio=snap.daily_loss_ratio, max_daily_loss=r.max_daily_loss,
                      drawdown=snap.drawdown, max_drawdown=r.max_drawdown)
        if margin > free:
            reasons.append("insufficient_margin")
        # a cent of tolerance: the size was computed from the same equity a moment ago
        if margin > cap + Decimal("0.01"):
            reasons.append("position_size_exceeded")
        if open_count >= t.max_open_positions:
            reasons.append("max_open_positions")
        if exposure + notional > max_exposure:
            reasons.append("max_exposure_exceeded")
        if not t.allow_same_symbol_position and (
                any(p.symbol == it.symbol for p in snap.positions)
                or it.symbol in snap.reserved_symbols):
            reasons.append("position_already_open")
        if snap.daily_loss_ratio >= Decimal(str(r.max_daily_loss)):
            reasons.append(DAILY_LOSS)
        if snap.drawdown >= Decimal(str(r.max_drawdown)):
            reasons.append(DRAWDOWN)

    def _market(self, it: TradeIntent, snap: Snapshot, reasons: list[str],
                checks: dict[str, object]) -> Decimal | None:
        lev, r = self.settings.leverage, self.settings.risk
        checks.update(last_price=snap.last_price, price_age_ms=snap.price_age_ms,
                      max_price_age_ms=r.max_price_age_ms)
        if snap.price_age_ms > r.max_price_age_ms:
            reasons.append("stale_market_data")
        if it.alert_price is not None and snap.last_price > 0:
            deviation = abs(it.alert_price - snap.last_price) / snap.last_price
            checks["alert_price_deviation"] = deviation
            if deviation > Decimal(str(r.price_band)):
                reasons.append("price_out_of_band")
        if it.quantity <= 0 or it.stop_loss is None:
            return None
        liq = liquidation_price(it.side, it.reference_price, it.quantity, it.leverage,
                                snap.brackets)
        stop_distance = abs(it.reference_price - it.stop_loss)
        buffer = stop_distance * Decimal(str(lev.liquidation_buffer))
        if it.side == "LONG":
            room = it.stop_loss - liq
        else:
            room = liq - it.stop_loss
        checks.update(liquidation_price=liq, stop_distance=stop_distance,
                      liquidation_room=room, required_room=buffer)
        if room < buffer:
            reasons.append("liquidation_before_stop")
        return liq.quantize(Decimal("0.00000001"))


def _jsonable(checks: dict[str, object]) -> dict[str, object]:
    return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in checks.items()}


def breaches(reasons: Sequence[str]) -> tuple[str, ...]:
    """The denials that mean the account itself is past a limit (trading must halt)."""
    return tuple(r for r in reasons if r in BREACH_REASONS)
