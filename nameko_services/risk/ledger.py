"""Daily realised PnL and the equity peak, tracked durably in SQL.

**Daily PnL, the one definition** (risk's daily loss limit, ``risk.status()["daily_pnl"]``,
Telegram's /pnl, /status and daily summary, the dashboard): realised PnL net of fees
since 00:00 UTC, i.e. the exchange wallet's change since the day's first observation. The
exchange is the source of truth: it includes trading fees, funding, stops and liquidations
that happened on the exchange while no service watched; unrealised PnL is not in it
(surfaces show it apart, labelled). The drawdown
is the margin balance (wallet + unrealised) below the highest one seen. Deposits or
transfers would show as PnL; a manual resume (:meth:`Ledger.rebase`) accepts the current
numbers as the new baseline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import DateTime, String
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from shared.db import PRICE, Base, utcnow

MONEY = PRICE  # exact on SQLite too (never through a float)


class RiskLedgerRow(Base):
    """One row per UTC day: the wallet at the day's start, the latest numbers, the peak."""

    __tablename__ = "risk_ledger"

    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    start_wallet: Mapped[Decimal] = mapped_column(MONEY)
    wallet: Mapped[Decimal] = mapped_column(MONEY)
    equity: Mapped[Decimal] = mapped_column(MONEY)
    peak_equity: Mapped[Decimal] = mapped_column(MONEY)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


@dataclass(frozen=True)
class LedgerView:
    day: str
    start_wallet: Decimal
    wallet: Decimal
    equity: Decimal
    peak_equity: Decimal

    @property
    def daily_pnl(self) -> Decimal:
        return self.wallet - self.start_wallet

    @property
    def daily_loss_ratio(self) -> Decimal:
        """Realised loss today as a fraction of the day's starting wallet (0 if a gain)."""
        if self.start_wallet <= 0:
            return Decimal(0)
        return max(Decimal(0), -self.daily_pnl) / self.start_wallet

    @property
    def drawdown(self) -> Decimal:
        """Equity below its peak as a fraction of the peak."""
        if self.peak_equity <= 0:
            return Decimal(0)
        return max(Decimal(0), self.peak_equity - self.equity) / self.peak_equity

    def wire(self) -> dict[str, str]:
        return {"day": self.day, "start_wallet": str(self.start_wallet),
                "wallet": str(self.wallet), "equity": str(self.equity),
                "peak_equity": str(self.peak_equity), "daily_pnl": str(self.daily_pnl),
                "daily_loss_ratio": str(self.daily_loss_ratio.quantize(Decimal("0.000001"))),
                "drawdown": str(self.drawdown.quantize(Decimal("0.000001")))}


def _view(row: RiskLedgerRow) -> LedgerView:
    return LedgerView(row.day, Decimal(row.start_wallet), Decimal(row.wallet),
                      Decimal(row.equity), Decimal(row.peak_equity))


class Ledger:
    def __init__(self, sessions: sessionmaker, clock: Callable[[], float] = time.time) -> None:
        self._sessions = sessions
        self._clock = clock

    def today(self) -> str:
        return datetime.fromtimestamp(self._clock(), UTC).strftime("%Y-%m-%d")

    def observe(self, wallet: Decimal, equity: Decimal) -> LedgerView:
        """Record the exchange's wallet and margin balance; returns today's numbers."""
        day = self.today()
        with self._sessions.begin() as s:
            row = s.get(RiskLedgerRow, day)
            if row is None:
                last = s.query(RiskLedgerRow).order_by(RiskLedgerRow.day.desc()).first()
                peak = max(Decimal(last.peak_equity), equity) if last else equity
                row = RiskLedgerRow(day=day, start_wallet=wallet, wallet=wallet, equity=equity,
                                    peak_equity=peak, updated_at=utcnow())
                s.add(row)
            else:
                row.wallet, row.equity = wallet, equity
                row.peak_equity = max(Decimal(row.peak_equity), equity)
                row.updated_at = utcnow()
            s.flush()
            return _view(row)

    def view(self) -> LedgerView | None:
        with self._sessions() as s:
            row = s.get(RiskLedgerRow, self.today())
            return _view(row) if row else None

    def rebase(self, wallet: Decimal, equity: Decimal) -> LedgerView:
        """Accept the current wallet and equity as the day's start and the peak."""
        day = self.today()
        with self._sessions.begin() as s:
            row = s.get(RiskLedgerRow, day)
            if row is None:
                row = RiskLedgerRow(day=day)
                s.add(row)
            row.start_wallet, row.wallet, row.equity, row.peak_equity = (
                wallet, wallet, equity, equity)
            row.updated_at = utcnow()
            s.flush()
            return _view(row)
