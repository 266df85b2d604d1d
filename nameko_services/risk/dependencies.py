"""Risk's dependencies: the account/market snapshot and the durable trading state."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from nameko.extensions import DependencyProvider
from sqlalchemy.orm import sessionmaker

from nameko_services.risk.engine import OpenPosition, Snapshot
from shared.db import RiskStateRow, make_sessionmaker, utcnow
from shared.market import ExchangeGateway, to_decimal
from shared.models import TradingState
from shared.settings import get_settings

STATES: tuple[TradingState, ...] = ("ACTIVE", "REDUCING", "HALTED")


class StateStore:
    """The trading state in SQL, so a restart of any service keeps a halt in force."""

    def __init__(self, sessions: sessionmaker) -> None:
        self._sessions = sessions

    def get(self) -> tuple[TradingState, str]:
        with self._sessions() as s:
            row = s.get(RiskStateRow, 1)
            if row is None:
                return "ACTIVE", ""
            return row.state, row.reason

    def set(self, state: TradingState, reason: str) -> tuple[TradingState, str]:
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}")
        with self._sessions.begin() as s:
            row = s.get(RiskStateRow, 1)
            previous: TradingState = row.state if row else "ACTIVE"
            if row is None:
                s.add(RiskStateRow(id=1, state=state, reason=reason, updated_at=utcnow()))
            else:
                row.state, row.reason, row.updated_at = state, reason, utcnow()
        return previous, reason


class RiskBook:
    """Builds the :class:`Snapshot` the engine checks an intent against."""

    def __init__(self, gateway: ExchangeGateway, state: StateStore) -> None:
        self.gateway = gateway
        self.state = state

    def open_positions(self) -> list[OpenPosition]:
        out = []
        for p in self.gateway.positions():
            symbol = str(p["info"].get("symbol") or p["symbol"])
            out.append(OpenPosition(
                symbol=symbol,
                side=str(p.get("side", "")).upper(),
                margin=to_decimal(p.get("initialMargin") or p.get("collateral")),
                notional=abs(to_decimal(p.get("notional"))),
            ))
        return out

    def snapshot(self, symbol: str) -> Snapshot:
        state, _ = self.state.get()
        equity, available = self.gateway.equity(ttl=0.0)
        price, ts = self.gateway.last_price(symbol)
        age = max(0, int(time.time() * 1000) - ts) if ts else 0
        return Snapshot(
            state=state,
            equity=equity,
            available=available,
            positions=self.open_positions(),
            last_price=price,
            price_age_ms=age,
            min_quantity=self.gateway.min_quantity(symbol),
            min_notional=self.gateway.min_notional(symbol),
            brackets=self.gateway.brackets(symbol),
        )

    def status(self) -> dict[str, Any]:
        state, reason = self.state.get()
        equity, available = self.gateway.equity(ttl=0.0)
        positions = self.open_positions()
        margin = sum((p.margin for p in positions), Decimal(0))
        exposure = sum((p.notional for p in positions), Decimal(0))
        return {
            "state": state,
            "reason": reason,
            "equity": str(equity),
            "available": str(available),
            "margin_used": str(margin),
            "margin_usage": str((margin / equity).quantize(Decimal("0.0001"))) if equity else "0",
            "exposure": str(exposure),
            "open_positions": [
                {"symbol": p.symbol, "side": p.side, "margin": str(p.margin),
                 "notional": str(p.notional)} for p in positions
            ],
        }


class Book(DependencyProvider):
    def setup(self) -> None:
        settings = get_settings()
        self.book = RiskBook(ExchangeGateway(settings, name="risk"),
                             StateStore(make_sessionmaker(settings)))

    def get_dependency(self, worker_ctx: Any) -> RiskBook:
        return self.book
