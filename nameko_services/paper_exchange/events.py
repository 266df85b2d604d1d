"""What the engine tells its listeners: immutable snapshots of each order/account change.

The engine emits these inside its lock, after the change is persisted, in the order the
changes happened; a listener (the WebSocket hub) turns them into Binance user-data events.
Listeners must be quick and must not call back into the engine: they run under its lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from .models import AlgoOrder, Order, Position, Trade


@dataclass(frozen=True)
class OrderEvent:
    """An order as it is after one execution (``x``: NEW, TRADE, CANCELED, EXPIRED)."""

    order: Order
    execution: str
    time: int
    trade: Trade | None = None


@dataclass(frozen=True)
class AccountEvent:
    """The wallet and the one position a fill changed (Binance pushes only what changed)."""

    time: int
    wallet: Decimal
    available: Decimal
    balance_change: Decimal
    position: Position
    mark: Decimal
    cum_realized: Decimal
    reason: str = "ORDER"


@dataclass(frozen=True)
class AlgoEvent:
    """A conditional order in ``algo.status`` (NEW, TRIGGERING, TRIGGERED, FINISHED, ...)."""

    algo: AlgoOrder
    time: int
    reason: str = ""


UserEvent = OrderEvent | AccountEvent | AlgoEvent
Listener = Callable[[UserEvent], None]
