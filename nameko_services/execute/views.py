"""Execute's read-only views: open positions (``execute.positions()``), the book's trades,
and the details an outcome carries about a booked position."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import redis

from shared.db import PositionRow
from shared.models import PositionView
from shared.state import Price

if TYPE_CHECKING:
    from nameko_services.execute.engine import ExecutionEngine


def positions(engine: ExecutionEngine) -> list[PositionView]:
    """The account's open positions (the feed's state, REST when stale), each with the
    book's stop-loss, take-profit and signal, and the feed's mark price."""
    ours = {p.symbol: p for p in engine.store.open_positions()}  # oldest first: newest wins
    snap = engine.snapshot()
    prices: dict[str, Price] = {}
    if engine.state is not None:
        with contextlib.suppress(redis.RedisError):
            prices = engine.state.prices()
    out: list[PositionView] = []
    for symbol, p in sorted(snap.positions.items()):
        row = ours.get(symbol)
        leverage = row.leverage if row else p.leverage or engine.settings.leverage.leverage
        liq = p.liquidation_price or (row.liquidation_price if row else None) or \
            p.liquidation(engine.ops.brackets(symbol), leverage)
        price = prices.get(symbol)
        mark = (price.mark or price.last) if price is not None else None
        out.append(PositionView(
            symbol=symbol, side=p.side, quantity=str(p.quantity),
            entry_price=str(p.entry_price), mark_price=str(mark or p.entry_price),
            unrealized_pnl=str(p.unrealized_pnl), leverage=leverage,
            margin=str(p.isolated_wallet or (row.margin if row else 0)),
            liquidation_price=str(liq),
            stop_loss=str(row.stop_loss) if row and row.stop_loss else None,
            take_profit=str(row.take_profit) if row and row.take_profit else None,
            signal_id=row.signal_id if row else "",
        ))
    return out


def trade(r: PositionRow) -> dict[str, Any]:
    """One position of the book as ``execute.trades()`` returns it."""
    return {
        "signal_id": r.signal_id, "symbol": r.symbol, "side": r.side,
        "quantity": str(r.quantity), "entry_price": str(r.entry_price),
        "exit_price": str(r.exit_price) if r.exit_price is not None else None,
        "realized_pnl": str(r.realized_pnl) if r.realized_pnl is not None else None,
        "status": r.status, "close_reason": r.close_reason,
        "opened_at": r.opened_at.isoformat(),
        "closed_at": r.closed_at.isoformat() if r.closed_at else None,
    }


def position_details(row: PositionRow) -> dict[str, Any]:
    """What an opened (or duplicate) outcome says about its position."""
    return {
        "side": row.side, "quantity": str(row.quantity), "entry_price": str(row.entry_price),
        "stop_loss": str(row.stop_loss), "take_profit": str(row.take_profit),
        "liquidation_price": str(row.liquidation_price), "margin": str(row.margin),
        "leverage": row.leverage, "strategy": row.strategy,
    }
