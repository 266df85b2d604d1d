"""The dashboard's row types, shared by reading, transforming and charts (no I/O here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from shared.records import Record


def num(value: Any) -> float | None:
    """A float from a record field ("" / None / garbage -> None)."""
    try:
        if value is None or value == "":
            return None
        return float(value)
    except (TypeError, ValueError):
        return None


def id_ms(entry_id: str) -> int:
    """The millisecond part of a Redis stream id."""
    try:
        return int(entry_id.split("-", 1)[0])
    except ValueError:
        return 0


def describe_error(exc: BaseException) -> str:
    """One line for the page: the exception's type and the first line of its message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class StreamEntry:
    """One decoded stream entry: its Redis id and the record it carries."""

    id: str
    record: Record

    @property
    def time(self) -> pd.Timestamp:
        ms = self.record.ts or id_ms(self.id)
        return pd.Timestamp(ms, unit="ms", tz="UTC")


@dataclass(frozen=True)
class Position:
    """One open position as the page shows it (floats: display only, never money math)."""

    symbol: str
    side: str
    quantity: float
    entry_price: float
    mark_price: float | None = None
    unrealized_pnl: float | None = None
    leverage: float | None = None
    margin: float | None = None
    liquidation_price: float | None = None
    stop_loss: float | None = None
    take_profit: float | None = None

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> Position:
        """From one ``execute.positions()`` row (decimal strings)."""
        return cls(
            symbol=str(data.get("symbol", "")).upper(),
            side=str(data.get("side", "")),
            quantity=num(data.get("quantity")) or 0.0,
            entry_price=num(data.get("entry_price")) or 0.0,
            mark_price=num(data.get("mark_price")),
            unrealized_pnl=num(data.get("unrealized_pnl")),
            leverage=num(data.get("leverage")),
            margin=num(data.get("margin")),
            liquidation_price=num(data.get("liquidation_price")),
            stop_loss=num(data.get("stop_loss")),
            take_profit=num(data.get("take_profit")),
        )


@dataclass(frozen=True)
class Fill:
    time: pd.Timestamp
    symbol: str
    side: str
    price: float
    quantity: float
    kind: str  # "entry" | "close"


@dataclass(frozen=True)
class ServiceHealth:
    service: str
    url: str
    ok: bool
    status: str
    latency_ms: float | None = None
