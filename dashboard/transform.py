"""Pure transforms of what the dashboard read into what it shows (records -> DataFrames).

No I/O and no Streamlit: every function takes records, snapshots or frames built by hand
in the tests. Positions come from one source, the feed's account state (through
``execute.positions()``, or read from Redis directly when RPC is down): they are never
rebuilt from trade events.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import pandas as pd

from dashboard.rows import Fill, Position, ServiceHealth, StreamEntry, num
from shared.lag import Lag
from shared.money import liquidation_distance
from shared.state import Account, Price

SIGNAL_COLUMNS = [
    "time", "signal_id", "symbol", "action", "side", "price", "phoenix_score",
    "final_confidence", "decision", "reasons", "risk", "status", "orders",
]
TRADE_EVENT_COLUMNS = ["time", "type", "symbol", "signal_id", "detail"]
POSITION_COLUMNS = [
    "symbol", "side", "quantity", "entry_price", "mark_price", "unrealized_pnl", "leverage",
    "margin", "liquidation_price", "stop_loss", "take_profit",
]


# --------------------------------------------------------------------------- signals


def _reasons(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    if isinstance(value, Iterable):
        return ", ".join(str(v) for v in value)
    return str(value)


def _new_signal_row(entry: StreamEntry) -> dict[str, Any]:
    row: dict[str, Any] = {c: None for c in SIGNAL_COLUMNS}
    row.update(time=entry.time, signal_id=entry.record.signal_id, reasons="", risk="",
               status="", orders="")
    return row


def _apply_signal(row: dict[str, Any], kind: str, data: dict[str, Any]) -> None:
    if not row["symbol"] and data.get("symbol"):
        row["symbol"] = str(data["symbol"]).upper()
    if not row["side"] and data.get("side"):
        row["side"] = str(data["side"])
    if kind == "signal_accepted":
        row["action"] = data.get("action")
        row["price"] = num(data.get("price"))
        row["status"] = row["status"] or "accepted"
    elif kind == "signal_scored":
        row["phoenix_score"] = num(data.get("phoenix_score"))
        row["final_confidence"] = num(data.get("final_confidence"))
        row["decision"] = data.get("decision")
        row["reasons"] = _reasons(data.get("reasons"))
        if row["status"] in ("", "accepted"):
            row["status"] = "scored: " + str(data.get("decision") or "?")
    elif kind == "signal_rejected":
        row["decision"] = "rejected"
        detail = data.get("detail")
        reason = str(data.get("reason") or "")
        row["reasons"] = f"{reason}: {detail}" if detail else reason
        row["status"] = "rejected"


def _apply_risk(row: dict[str, Any], data: dict[str, Any]) -> None:
    approved = bool(data.get("approved"))
    reasons = _reasons(data.get("reasons"))
    row["risk"] = "approved" if approved else (f"rejected: {reasons}" if reasons else "rejected")
    if not row["status"].startswith(("filled", "failed", "closed")):
        row["status"] = "risk approved" if approved else "risk rejected"


def _add_orders(row: dict[str, Any], ids: Iterable[Any]) -> None:
    known = [o for o in str(row["orders"]).split(", ") if o]
    for order in ids:
        if order and str(order) not in known:
            known.append(str(order))
    row["orders"] = ", ".join(known)


def _apply_trade(row: dict[str, Any], kind: str, data: dict[str, Any]) -> None:
    _add_orders(row, (data.get(k) for k in ("client_order_id", "order_id", "sl_client_id",
                                            "tp_client_id")))
    if kind == "entry_filled":
        price = num(data.get("entry_price"))
        row["status"] = f"filled @ {price:g}" if price is not None else "filled"
    elif kind == "trade_failed":
        row["status"] = "failed: " + str(data.get("reason") or "?")
    elif kind == "position_closed":
        pnl = num(data.get("realized_pnl"))
        row["status"] = f"closed ({pnl:+.2f})" if pnl is not None else "closed"


SIGNAL_TYPES = ("signal_accepted", "signal_scored", "signal_rejected")


def join_signals(
    signal_entries: Iterable[StreamEntry],
    risk_entries: Iterable[StreamEntry] = (),
    trade_entries: Iterable[StreamEntry] = (),
) -> pd.DataFrame:
    """One row per signal, newest first, joining its records by ``signal_id``.

    ``signal_accepted`` gives symbol/action/side/price, ``signal_scored`` the Phoenix score,
    final confidence, decision and reasons, ``risk_check`` the risk verdict and
    ``entry_filled`` / ``trade_failed`` / ``position_closed`` the outcome. ``status`` is the
    furthest stage the signal reached; ``time`` its earliest record. Records without a
    ``signal_id`` (e.g. a rejected malformed webhook) get a row of their own.
    """
    rows: dict[str, dict[str, Any]] = {}
    for e in signal_entries:
        if e.record.type not in SIGNAL_TYPES:
            continue
        key = e.record.signal_id or f"entry:{e.id}"
        row = rows.setdefault(key, _new_signal_row(e))
        row["time"] = min(row["time"], e.time)
        _apply_signal(row, e.record.type, e.record.data)

    by_id = {k: v for k, v in rows.items() if v["signal_id"]}
    for e in risk_entries:
        if e.record.type == "risk_check" and e.record.signal_id in by_id:
            _apply_risk(by_id[e.record.signal_id], e.record.data)
    for e in trade_entries:
        if e.record.signal_id in by_id:
            _apply_trade(by_id[e.record.signal_id], e.record.type, e.record.data)

    frame = pd.DataFrame(list(rows.values()), columns=SIGNAL_COLUMNS)
    if frame.empty:
        return frame
    return frame.sort_values("time", ascending=False, kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- positions

STOP_TYPES = frozenset({"STOP_MARKET", "STOP"})
TAKE_PROFIT_TYPES = frozenset({"TAKE_PROFIT_MARKET", "TAKE_PROFIT"})


def _trigger(account: Account, symbol: str, types: frozenset[str]) -> float | None:
    """The trigger price of the symbol's open reduce-only bracket leg of these types."""
    for order in account.open_orders(symbol):
        if order.type in types and order.trigger_price is not None:
            return float(order.trigger_price)
    return None


def positions_from_account(account: Account, prices: Mapping[str, Price]) -> list[Position]:
    """Open positions of the feed's account state, marked to the price stream.

    The same source ``execute.positions()`` reads; SL and TP are the trigger prices of the
    open STOP_MARKET / TAKE_PROFIT_MARKET orders, the liquidation price the exchange's
    (absent when the feed has only seen stream updates, which do not carry it).
    """
    out: list[Position] = []
    for p in sorted(account.positions, key=lambda p: p.symbol):
        price = prices.get(p.symbol)
        mark = (price.mark or price.last) if price is not None else None
        out.append(Position(
            symbol=p.symbol, side=p.side, quantity=float(p.quantity),
            entry_price=float(p.entry_price),
            mark_price=float(mark) if mark else None,
            unrealized_pnl=float(p.unrealized_at(mark) if mark else p.unrealized_pnl),
            leverage=float(p.leverage) if p.leverage else None,
            margin=float(p.isolated_wallet) if p.isolated_wallet else None,
            liquidation_price=float(p.liquidation_price) if p.liquidation_price else None,
            stop_loss=_trigger(account, p.symbol, STOP_TYPES),
            take_profit=_trigger(account, p.symbol, TAKE_PROFIT_TYPES),
        ))
    return out


def positions_frame(positions: Sequence[Position]) -> pd.DataFrame:
    return pd.DataFrame([p.__dict__ for p in positions], columns=POSITION_COLUMNS)


def liquidation_distance_pct(position: Position) -> float | None:
    """``shared.money.liquidation_distance`` from the mark (else entry), in percent."""
    ref = position.mark_price or position.entry_price
    if not ref or position.liquidation_price is None:
        return None
    distance = liquidation_distance(position.side, Decimal(str(ref)),
                                    Decimal(str(position.liquidation_price)))
    return None if distance is None else float(distance * 100)


# --------------------------------------------------------------------------- trades


def fills_from_trades(trade_entries: Iterable[StreamEntry], symbol: str) -> list[Fill]:
    """Entry fills (and closes, at the last known entry's symbol) of one symbol."""
    symbol = symbol.upper()
    fills: list[Fill] = []
    for e in trade_entries:
        data = e.record.data
        if str(data.get("symbol", "")).upper() != symbol:
            continue
        if e.record.type == "entry_filled":
            price = num(data.get("entry_price"))
            if price is not None:
                fills.append(Fill(e.time, symbol, str(data.get("side", "")), price,
                                  num(data.get("quantity")) or 0.0, "entry"))
        elif e.record.type == "position_closed":
            price = num(data.get("exit_price")) or num(data.get("price"))
            if price is not None:
                fills.append(Fill(e.time, symbol, str(data.get("side", "")), price,
                                  num(data.get("quantity")) or 0.0, "close"))
    return fills


def _trade_detail(kind: str, data: dict[str, Any]) -> str:
    if kind == "entry_filled":
        return (f"{data.get('side', '')} {data.get('quantity', '')} @ {data.get('entry_price', '')}"
                f" x{data.get('leverage', '')} margin {data.get('margin', '')}")
    if kind == "brackets_placed":
        return (f"SL {data.get('stop_loss', '')} / TP {data.get('take_profit', '')}"
                f" / liq {data.get('liquidation_price', '')}")
    if kind == "trade_failed":
        return str(data.get("reason", ""))
    if kind == "position_closed":
        return f"{data.get('reason', '')} pnl {data.get('realized_pnl', '')}"
    shown = {k: v for k, v in data.items() if k != "symbol"}
    return json.dumps(shown, default=str)[:200]


def trade_events_frame(trade_entries: Iterable[StreamEntry]) -> pd.DataFrame:
    """Trade events, newest first."""
    rows = [
        {
            "time": e.time,
            "type": e.record.type,
            "symbol": str(e.record.data.get("symbol", "")).upper(),
            "signal_id": e.record.signal_id,
            "detail": _trade_detail(e.record.type, e.record.data),
        }
        for e in trade_entries
    ]
    frame = pd.DataFrame(rows, columns=TRADE_EVENT_COLUMNS)
    if frame.empty:
        return frame
    return frame.iloc[::-1].reset_index(drop=True)


# --------------------------------------------------------------------------- lag


def lag_frame(rows: Sequence[Lag]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"broker": r.broker, "source": r.source, "group": r.group, "lag": r.messages,
          "pending": r.pending, "consumers": r.consumers, "error": r.error or ""}
         for r in rows],
        columns=["broker", "source", "group", "lag", "pending", "consumers", "error"])


def broker_rows(rows: Sequence[Lag]) -> list[ServiceHealth]:
    """Broker health from the lag probes: up if any probe of that broker answered."""
    status: dict[str, ServiceHealth] = {}
    for r in rows:
        if r.error is None:
            status[r.broker] = ServiceHealth(r.broker, "", True, "ok")
        elif r.broker not in status:
            status[r.broker] = ServiceHealth(r.broker, "", False, r.error)
    return [status[b] for b in sorted(status)]


# --------------------------------------------------------------------------- PnL, latency

CLOSED_COLUMNS = ["closed_at", "symbol", "side", "quantity", "entry_price", "exit_price",
                  "realized_pnl", "close_reason", "signal_id"]


def closed_trades_frame(trades: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Closed trades (``execute.trades()``), newest first, numbers as floats."""
    rows = []
    for t in trades:
        if not t.get("closed_at") and t.get("realized_pnl") in (None, ""):
            continue
        rows.append({
            "closed_at": pd.to_datetime(t.get("closed_at"), utc=True, errors="coerce"),
            "symbol": t.get("symbol"), "side": t.get("side"),
            "quantity": num(t.get("quantity")), "entry_price": num(t.get("entry_price")),
            "exit_price": num(t.get("exit_price")), "realized_pnl": num(t.get("realized_pnl")),
            "close_reason": t.get("close_reason"), "signal_id": t.get("signal_id"),
        })
    frame = pd.DataFrame(rows, columns=CLOSED_COLUMNS)
    if frame.empty:
        return frame
    return frame.sort_values("closed_at", ascending=False, kind="stable").reset_index(drop=True)


def equity_curve(closed: pd.DataFrame, equity_now: float | None,
                 unrealized_now: float = 0.0) -> pd.DataFrame:
    """Realised equity after each closed trade and its drawdown from the running peak.

    Anchored at the current realised equity (``equity_now - unrealized_now``) and walked
    back through the realised PnL, so the curve ends where the account is now.
    """
    columns = ["time", "equity", "drawdown", "drawdown_pct"]
    if closed.empty or equity_now is None:
        return pd.DataFrame(columns=columns)
    ordered = closed.dropna(subset=["closed_at"]).sort_values("closed_at", kind="stable")
    pnl = ordered["realized_pnl"].fillna(0.0)
    end = equity_now - unrealized_now
    start = end - float(pnl.sum())
    equity = start + pnl.cumsum()
    times = list(ordered["closed_at"])
    first_time = times[0] - pd.Timedelta(seconds=1) if times else pd.Timestamp.now(tz="UTC")
    frame = pd.DataFrame({"time": [first_time, *times],
                          "equity": [start, *equity.tolist()]})
    peak = frame["equity"].cummax()
    frame["drawdown"] = frame["equity"] - peak
    frame["drawdown_pct"] = (frame["drawdown"] / peak.where(peak != 0)).fillna(0.0) * 100
    return frame


def pipeline_latencies(signal_entries: Iterable[StreamEntry],
                       trade_entries: Iterable[StreamEntry]) -> list[float]:
    """Seconds from a signal's first record to its ``entry_filled``, per filled signal."""
    first: dict[str, pd.Timestamp] = {}
    for e in signal_entries:
        sid = e.record.signal_id
        if sid and (sid not in first or e.time < first[sid]):
            first[sid] = e.time
    out = []
    for e in trade_entries:
        sid = e.record.signal_id
        if e.record.type == "entry_filled" and sid in first:
            seconds = (e.time - first[sid]).total_seconds()
            if seconds >= 0:
                out.append(seconds)
    return out
