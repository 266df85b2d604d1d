"""Human-readable alert texts for each event the other services dispatch."""

from __future__ import annotations

from typing import Any


def _sid(e: dict[str, Any]) -> str:
    sid = str(e.get("signal_id") or "")
    return f"\nsignal {sid}" if sid else ""


def trade_opened(e: dict[str, Any]) -> str:
    return (f"ENTRY FILLED {e['symbol']} {e['side']} {e['quantity']} @ {e['entry_price']} "
            f"({e.get('leverage', '?')}x isolated, margin {e.get('margin')} USDT)\n"
            f"SL {e.get('stop_loss')} | TP {e.get('take_profit')} | "
            f"liq {e.get('liquidation_price')}" + _sid(e))


def trade_failed(e: dict[str, Any]) -> str:
    return f"TRADE FAILED {e['symbol']}: {e['reason']}" + _sid(e)


def position_closed(e: dict[str, Any]) -> str:
    return (f"POSITION CLOSED {e['symbol']} ({e.get('reason')}) exit {e.get('exit_price')} "
            f"realised PnL {e.get('realized_pnl')} USDT" + _sid(e))


def signal_rejected(e: dict[str, Any]) -> str:
    reasons = e.get("reasons") or ([e["reason"]] if e.get("reason") else ["unknown"])
    return f"Signal rejected {e.get('symbol', '?')}: {', '.join(map(str, reasons))}" + _sid(e)


def signal_accepted(e: dict[str, Any]) -> str:
    extra = ""
    if e.get("final_confidence") is not None:
        extra = f" (final confidence {e['final_confidence']})"
    return (f"Signal accepted {e.get('symbol', '?')} {e.get('side') or e.get('action') or ''}"
            f"{extra} -> execution queue" + _sid(e))

