"""Human-readable alert texts for each event the other services dispatch."""

from __future__ import annotations

from typing import Any


def trade_opened(e: dict[str, Any]) -> str:
    return (f"ENTRY FILLED {e['symbol']} {e['side']} {e['quantity']} @ {e['entry_price']} "
            f"({e['leverage']}x isolated, margin {e['margin']})\n"
            f"SL {e['stop_loss']} | TP {e['take_profit']} | liq {e['liquidation_price']}")


def trade_failed(e: dict[str, Any]) -> str:
    return f"TRADE FAILED {e['symbol']}: {e['reason']} (signal {e['signal_id']})"


def position_closed(e: dict[str, Any]) -> str:
    return (f"POSITION CLOSED {e['symbol']} ({e['reason']}) exit {e.get('exit_price')} "
            f"PnL {e.get('realized_pnl')} USDT")


def signal_rejected(e: dict[str, Any]) -> str:
    return f"Signal rejected {e['symbol']}: {', '.join(e.get('reasons') or ['unknown'])}"


def signal_accepted(e: dict[str, Any]) -> str:
    return f"Signal approved {e['symbol']} {e.get('side')} -> execution queue"


def state_changed(e: dict[str, Any]) -> str:
    return f"TRADING STATE {e['previous']} -> {e['state']}: {e.get('reason') or 'no reason'}"
