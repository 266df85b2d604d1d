"""What execute tells the other services about an outcome, built in one place.

Pure: each function turns an :class:`~nameko_services.execute.engine.Outcome` or a
:class:`~nameko_services.execute.reconcile.Correction` into the trade:stream records
(mirrored to Kafka ``trading_events``), the Nameko events and the alert it causes; the
service only sends them. The payloads are the TypedDicts of :mod:`shared.models`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nameko_services.execute.engine import Outcome
from nameko_services.execute.reconcile import CLOSING_KINDS, Correction, Level
from shared.models import (
    EntryFilledRecord,
    PositionClosedEvent,
    PositionClosedRecord,
    RiskAlert,
    TradeFailedEvent,
    TradeOpenedEvent,
)
from shared.names import (
    EVT_POSITION_CLOSED,
    EVT_RECONCILIATION,
    EVT_TRADE_FAILED,
    EVT_TRADE_OPENED,
    REC_BRACKETS_PLACED,
    REC_ENTRY_FILLED,
    REC_POSITION_CLOSED,
    REC_RECONCILIATION,
    REC_TRADE_FAILED,
)
from shared.records import Record


@dataclass
class Report:
    records: list[Record] = field(default_factory=list)  # trade:stream, in order
    events: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)  # Nameko
    alert: RiskAlert | None = None


def alert(level: Level, code: str, text: str, symbol: str, signal_id: str) -> RiskAlert:
    return RiskAlert(level=level, code=code, text=text, symbol=symbol, signal_id=signal_id)


def opened(outcome: Outcome) -> Report:
    """An opened (or, redelivered, a duplicate) entry: entry_filled, then brackets_placed
    and ``trade_opened`` for a new one."""
    d = outcome.details
    entry: EntryFilledRecord = {
        "symbol": outcome.symbol, "side": d.get("side"), "quantity": d.get("quantity"),
        "entry_price": d.get("entry_price"), "leverage": d.get("leverage"),
        "margin": d.get("margin"), "status": outcome.status, "filled_at": d.get("filled_at"),
        "strategy": d.get("strategy")}
    report = Report([Record(REC_ENTRY_FILLED, dict(entry), outcome.signal_id)])
    if outcome.status == "duplicate":
        return report
    report.records.append(Record(REC_BRACKETS_PLACED, {
        "symbol": outcome.symbol, "stop_loss": d.get("stop_loss"),
        "take_profit": d.get("take_profit"), "sl_client_id": d.get("sl_client_id"),
        "tp_client_id": d.get("tp_client_id"), "stop_loss_armed": d.get("stop_loss_armed"),
        "take_profit_armed": d.get("take_profit_armed"),
        "liquidation_price": d.get("liquidation_price"), "armed_at": d.get("armed_at")},
        outcome.signal_id))
    event: TradeOpenedEvent = {
        "type": "trade_opened", "signal_id": outcome.signal_id, "symbol": outcome.symbol,
        "side": d["side"], "quantity": d["quantity"], "entry_price": d["entry_price"],
        "stop_loss": d["stop_loss"], "take_profit": d["take_profit"],
        "liquidation_price": d["liquidation_price"], "margin": d["margin"],
        "leverage": d["leverage"], "strategy": d.get("strategy")}
    report.events.append((EVT_TRADE_OPENED, event))
    return report


def failed(outcome: Outcome) -> Report:
    """An intent that ended without a position: trade_failed (risk releases its
    reservation) and an alert; a blocked symbol's alert is PREFLIGHT_FAILED."""
    event: TradeFailedEvent = {"type": "trade_failed", "signal_id": outcome.signal_id,
                               "symbol": outcome.symbol, "reason": outcome.reason}
    report = Report([Record(REC_TRADE_FAILED, {"symbol": outcome.symbol,
                                               "reason": outcome.reason}, outcome.signal_id)],
                    [(EVT_TRADE_FAILED, event)])
    if outcome.status == "blocked":
        report.alert = alert("critical", "PREFLIGHT_FAILED", outcome.reason, outcome.symbol,
                             outcome.signal_id)
        return report
    critical = "position closed" in outcome.reason or "refused" in outcome.reason or \
        "idempotency" in outcome.reason
    code = "INTENT_EXPIRED" if outcome.reason == "intent_expired" else "TRADE_FAILED"
    report.alert = alert("critical" if critical else "warning", code,
                         f"{outcome.symbol} not traded: {outcome.reason}", outcome.symbol,
                         outcome.signal_id)
    return report


def position_closed(signal_id: str, symbol: str, reason: str,
                    details: Mapping[str, Any]) -> Report:
    """A position booked closed, with the side and strategy of the intent that opened it."""
    record: PositionClosedRecord = {
        "symbol": symbol, "side": details.get("side"), "strategy": details.get("strategy"),
        "reason": reason, "exit_price": details.get("exit_price"),
        "realized_pnl": details.get("realized_pnl")}
    event: PositionClosedEvent = {"type": "position_closed", "signal_id": signal_id,
                                  **record}
    return Report([Record(REC_POSITION_CLOSED, dict(record), signal_id)],
                  [(EVT_POSITION_CLOSED, event)])


def closed(outcome: Outcome) -> Report:
    """A requested close: position_closed when it closed something, else nothing."""
    if outcome.status != "closed":
        return Report()
    return position_closed(outcome.signal_id, outcome.symbol, outcome.reason,
                           outcome.details)


def corrected(c: Correction) -> Report:
    """A reconciliation repair: its record and event, position_closed when it ended a
    position, and an alert unless it is a routine booked close."""
    report = Report([Record(REC_RECONCILIATION, {"kind": c.kind, "symbol": c.symbol,
                                                 "text": c.text, **c.details}, c.signal_id)],
                    [(EVT_RECONCILIATION, {"type": "reconciliation", "kind": c.kind,
                                           "signal_id": c.signal_id, "symbol": c.symbol,
                                           "text": c.text})])
    if c.kind in CLOSING_KINDS:
        close = position_closed(c.signal_id, c.symbol, c.details.get("reason", c.kind),
                                c.details)
        report.records += close.records
        report.events += close.events
    if c.kind != "booked_close" or c.level == "critical":
        report.alert = alert(c.level, f"RECONCILIATION_{c.kind.upper()}", c.text, c.symbol,
                             c.signal_id)
    return report
