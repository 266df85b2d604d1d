"""Live watch: how close each open position is to its liquidation and its stop-loss.

Pure computation; the service feeds it ticks from ``market:stream`` and positions from
the feed's account state, and fans out what it returns (alerts, metrics, records).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from shared.models import RiskAlert
from shared.money import Bracket, liquidation_distance, maintenance_margin
from shared.settings import RiskSettings

Level = Literal["", "warning", "critical"]
RANK: dict[str, int] = {"": 0, "warning": 1, "critical": 2}
RATIO = Decimal("0.000001")


@dataclass(frozen=True)
class WatchedPosition:
    """An open position as the feed's state holds it, plus its stop-loss trigger if armed."""

    symbol: str
    side: str  # LONG | SHORT
    quantity: Decimal
    entry_price: Decimal
    liquidation_price: Decimal
    isolated_wallet: Decimal
    stop_loss: Decimal | None = None
    stop_armed: bool = False


@dataclass(frozen=True)
class PositionRisk:
    symbol: str
    side: str
    mark_price: Decimal
    entry_price: Decimal
    liquidation_price: Decimal
    liquidation_distance: Decimal  # (mark - liq) / mark for a long; 0 once crossed
    stop_loss: Decimal | None
    stop_distance: Decimal | None
    unrealized_pnl: Decimal
    margin_ratio: Decimal  # maintenance margin / (isolated wallet + unrealised PnL)
    liquidation_level: Level
    stop_level: Level

    def wire(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol, "side": self.side, "mark_price": str(self.mark_price),
            "entry_price": str(self.entry_price),
            "liquidation_price": str(self.liquidation_price),
            "liquidation_distance": str(self.liquidation_distance.quantize(RATIO)),
            "stop_loss": str(self.stop_loss) if self.stop_loss is not None else None,
            "stop_distance": (str(self.stop_distance.quantize(RATIO))
                              if self.stop_distance is not None else None),
            "unrealized_pnl": str(self.unrealized_pnl.quantize(Decimal("0.00000001"))),
            "margin_ratio": str(self.margin_ratio.quantize(RATIO)),
            "liquidation_level": self.liquidation_level, "stop_level": self.stop_level,
        }


class WatchEngine:
    def __init__(self, settings: RiskSettings) -> None:
        self.settings = settings

    def evaluate(self, pos: WatchedPosition, mark: Decimal,
                 brackets: Sequence[Bracket]) -> PositionRisk:
        s = self.settings
        long = pos.side == "LONG"
        sign = 1 if long else -1
        distance = liquidation_distance(pos.side, mark, pos.liquidation_price)
        if pos.liquidation_price <= 0:  # no liquidation price (fully collateralised)
            liq_distance = Decimal(1)
        else:  # no mark: treat as at the liquidation price, the safe side
            liq_distance = distance if distance is not None else Decimal(0)
        stop_distance = None
        if pos.stop_loss is not None and mark > 0:
            stop_distance = max(Decimal(0), (mark - pos.stop_loss) * sign / mark)
        upnl = (mark - pos.entry_price) * pos.quantity * sign
        balance = pos.isolated_wallet + upnl
        maint = maintenance_margin(pos.quantity * mark, brackets)
        margin_ratio = maint / balance if balance > 0 else Decimal(1)
        level: Level = ""
        if liq_distance <= Decimal(str(s.liquidation_critical)):
            level = "critical"
        elif liq_distance <= Decimal(str(s.liquidation_warning)):
            level = "warning"
        stop_level: Level = ""
        if stop_distance is not None and stop_distance <= Decimal(str(s.stop_warning)):
            stop_level = "warning"
        return PositionRisk(pos.symbol, pos.side, mark, pos.entry_price,
                            pos.liquidation_price, liq_distance, pos.stop_loss, stop_distance,
                            upnl, margin_ratio, level, stop_level)


def liquidation_alert(risk: PositionRisk) -> RiskAlert:
    pct = (risk.liquidation_distance * 100).quantize(Decimal("0.01"))
    return RiskAlert(
        level="critical" if risk.liquidation_level == "critical" else "warning",
        code=f"LIQUIDATION_{risk.liquidation_level.upper()}", symbol=risk.symbol,
        text=(f"{risk.symbol} {risk.side}: mark {risk.mark_price} is {pct}% from "
              f"liquidation at {risk.liquidation_price} (stop {risk.stop_loss}, "
              f"unrealised {risk.unrealized_pnl.quantize(Decimal('0.01'))} USDT)"))


def stop_alert(risk: PositionRisk) -> RiskAlert:
    pct = ((risk.stop_distance or Decimal(0)) * 100).quantize(Decimal("0.01"))
    return RiskAlert(level="warning", code="STOP_APPROACHING", symbol=risk.symbol,
                     text=(f"{risk.symbol} {risk.side}: mark {risk.mark_price} is {pct}% "
                           f"from the stop-loss at {risk.stop_loss}"))


def missing_stop_alert(pos: WatchedPosition) -> RiskAlert:
    return RiskAlert(level="critical", code="STOP_LOSS_MISSING", symbol=pos.symbol,
                     text=(f"{pos.symbol} {pos.side} {pos.quantity} has NO stop-loss on the "
                           f"exchange (liquidation at {pos.liquidation_price}); asking "
                           "execute to re-arm it"))
