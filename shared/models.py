"""Typed messages that cross service boundaries (AMQP bodies, RPC payloads, events).

Every message carries a ``type`` literal so a consumer can tell them apart and a
schema change is visible in one file.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field

Side = Literal["LONG", "SHORT"]
Action = Literal["buy", "sell", "long", "short", "close"]
TradingState = Literal["ACTIVE", "REDUCING", "HALTED"]


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def wire(self) -> dict[str, Any]:
        """JSON-safe dict for AMQP/RPC (Decimals as strings, datetimes ISO)."""
        return self.model_dump(mode="json")


def scoped_key(strategy: str, symbol: str, idempotency_key: str) -> str:
    """An alert's idempotency scope: the same alert id in another strategy or on another
    symbol is another trade. Brain dedups on it (for ``IDEMPOTENCY_WINDOW_S``) and
    execute derives every client order id from it, so both agree on what a repeat is."""
    return f"{strategy}|{symbol}|{idempotency_key}"


class Signal(_Message):
    """A TradingView alert that passed intake: authenticated, validated, normalised."""

    type: Literal["signal"] = "signal"
    signal_id: str
    idempotency_key: str
    symbol: str
    action: Action
    side: Side | None  # None for "close"
    price: Decimal | None = None
    confidence: float = Field(ge=0.0, le=1.0)
    strategy: str = "default"
    interval: str = ""
    alert_time: datetime | None = None
    received_at: datetime

    @property
    def scoped_key(self) -> str:
        return scoped_key(self.strategy, self.symbol, self.idempotency_key)


class Analysis(_Message):
    """Brain's verdict on a signal: the Phoenix 95 score, the three gates, the size."""

    type: Literal["analysis"] = "analysis"
    signal_id: str
    symbol: str
    side: Side | None
    model_probability: float
    phoenix_score: float
    final_confidence: float
    margin_fraction: float
    decision: Literal["approved", "rejected"]
    reasons: tuple[str, ...] = ()
    features: dict[str, float] = Field(default_factory=dict)
    model_version: str = ""
    gates: dict[str, Any] = Field(default_factory=dict)
    sizing: dict[str, Any] = Field(default_factory=dict)


class TradeIntent(_Message):
    """A fully specified order request: what risk checks and execute carries out."""

    type: Literal["trade_intent"] = "trade_intent"
    signal_id: str
    idempotency_key: str
    symbol: str
    side: Side
    quantity: Decimal = Field(gt=0)
    reference_price: Decimal = Field(gt=0)
    alert_price: Decimal | None = None
    leverage: int
    margin_mode: str = "ISOLATED"
    stop_loss: Decimal | None
    take_profit: Decimal | None
    margin: Decimal
    strategy: str = "default"
    received_at: datetime | None = None  # when the webhook arrived (end-to-end latency)

    @property
    def scoped_key(self) -> str:
        return scoped_key(self.strategy, self.symbol, self.idempotency_key)


class RiskDecision(_Message):
    type: Literal["risk_decision"] = "risk_decision"
    signal_id: str
    approved: bool
    reasons: tuple[str, ...] = ()
    checks: dict[str, Any] = Field(default_factory=dict)
    liquidation_price: Decimal | None = None


class CloseRequest(_Message):
    type: Literal["close_request"] = "close_request"
    signal_id: str
    idempotency_key: str
    symbol: str
    reason: str = "signal"


class RiskAlert(_Message):
    type: Literal["risk_alert"] = "risk_alert"
    level: Literal["info", "warning", "critical"]
    code: str
    text: str
    symbol: str | None = None
    signal_id: str = ""
    # set on an alert that must reach Telegram once (a trading state change): notify
    # de-duplicates on it across redeliveries and instances; "" = not de-duplicated
    alert_id: str = ""


# --- Nameko event payloads (dispatched by execute/risk/brain, handled by notify) ---


class TradeOpenedEvent(TypedDict):
    type: Literal["trade_opened"]
    signal_id: str
    symbol: str
    side: str
    quantity: str
    entry_price: str
    stop_loss: str
    take_profit: str
    liquidation_price: str
    margin: str
    leverage: int


class TradeFailedEvent(TypedDict):
    type: Literal["trade_failed"]
    signal_id: str
    symbol: str
    reason: str


class SignalRejectedEvent(TypedDict):
    type: Literal["signal_rejected"]
    signal_id: str
    symbol: str
    reasons: list[str]


class PositionClosedEvent(TypedDict):
    type: Literal["position_closed"]
    signal_id: str
    symbol: str
    reason: str
    exit_price: str
    realized_pnl: str


class PositionView(TypedDict):
    """One open position as ``execute.positions()`` returns it."""

    symbol: str
    side: str
    quantity: str
    entry_price: str
    mark_price: str
    unrealized_pnl: str
    leverage: int
    margin: str
    liquidation_price: str
    stop_loss: str | None
    take_profit: str | None
    signal_id: str


# --- Records the feed writes (market:stream; trade:stream + Kafka trading_events) ---
# Redis stream entries are shared.records.Record(type, data, signal_id="", ts): ``data`` is
# one of these. Prices are decimal strings; times are the exchange's, in epoch ms.


class TickRecord(TypedDict):
    """market:stream ``tick``: the latest prices of one symbol (mark every second)."""

    symbol: str
    price: str  # last trade (or mark when no trade yet)
    mark_price: str
    bid: str | None
    ask: str | None
    event_ms: int


class KlineRecord(TypedDict):
    """market:stream ``kline``: one closed candle."""

    symbol: str
    interval: str
    open_time: int
    open: str
    high: str
    low: str
    close: str
    volume: str


class ExchangeOrderRecord(TypedDict):
    """trade:stream ``exchange_order``: an ORDER_TRADE_UPDATE or ALGO_UPDATE, as the
    shared.state.Order it produced, plus the fill of this event (x=TRADE) if any."""

    event: str  # ORDER_TRADE_UPDATE | ALGO_UPDATE
    order: dict[str, Any]  # shared.state.Order.model_dump(mode="json")
    execution: str  # x: NEW, TRADE, CANCELED, EXPIRED, ... ("" for algo updates)
    trade_id: str  # t, when execution == TRADE
    last_fill_price: str  # L
    last_fill_quantity: str  # l
    commission: str  # n
    commission_asset: str  # N
    realized_pnl: str  # rp
    event_ms: int


class ExchangePositionRecord(TypedDict):
    """trade:stream ``exchange_position``: a position changed (quantity "0" when flat)."""

    symbol: str
    side: str  # LONG | SHORT ("" when flat)
    quantity: str
    entry_price: str
    reason: str  # ACCOUNT_UPDATE's m: ORDER, FUNDING_FEE, ... or SNAPSHOT
    event_ms: int


class ExchangeBalanceRecord(TypedDict):
    """trade:stream ``exchange_balance``: the wallet changed."""

    asset: str
    wallet: str
    cross_wallet: str
    reason: str
    event_ms: int
