"""Engine state records and the Binance error type, shared by the engine and the HTTP layer."""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

ZERO = Decimal(0)


class ApiError(Exception):
    """A Binance-style rejection: JSON ``{"code": code, "msg": msg}`` with ``status``."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg
        self.status = status

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "msg": self.msg}


def num(value: Decimal, places: int | None = None) -> str:
    """Decimal as a Binance-style string: fixed-point, never exponent notation."""
    if places is not None:
        value = value.quantize(Decimal(1).scaleb(-places))
    text = format(value, "f")
    if places is None and "." in text:
        text = text.rstrip("0").rstrip(".") or "0"
    return text


@dataclass(frozen=True)
class Candle:
    open_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float

    def extend(self, price: float, volume: float) -> Candle:
        return replace(self, high=max(self.high, price), low=min(self.low, price), close=price,
                       volume=self.volume + volume)


@dataclass
class Position:
    symbol: str
    amount: Decimal = ZERO  # signed: >0 long, <0 short (one-way mode)
    entry_price: Decimal = ZERO
    isolated_wallet: Decimal = ZERO  # margin set aside for this position
    update_time: int = 0

    @property
    def side(self) -> str:
        return "LONG" if self.amount > 0 else "SHORT"

    def unrealized(self, mark: Decimal) -> Decimal:
        return self.amount * (mark - self.entry_price)


@dataclass
class Order:
    order_id: int
    client_order_id: str
    symbol: str
    side: str
    type: str
    orig_qty: Decimal
    reduce_only: bool
    time: int
    status: str = "NEW"
    executed_qty: Decimal = ZERO
    avg_price: Decimal = ZERO
    cum_quote: Decimal = ZERO
    update_time: int = 0
    close_position: bool = False

    def to_json(self, price_places: int) -> dict[str, Any]:
        return {
            "orderId": self.order_id,
            "symbol": self.symbol,
            "status": self.status,
            "clientOrderId": self.client_order_id,
            "price": "0",
            "avgPrice": num(self.avg_price, price_places) if self.avg_price else "0",
            "origQty": num(self.orig_qty),
            "executedQty": num(self.executed_qty),
            "cumQty": num(self.executed_qty),
            "cumQuote": num(self.cum_quote),
            "timeInForce": "GTC",
            "type": self.type,
            "origType": self.type,
            "reduceOnly": self.reduce_only,
            "closePosition": self.close_position,
            "side": self.side,
            "positionSide": "BOTH",
            "stopPrice": "0",
            "workingType": "CONTRACT_PRICE",
            "priceProtect": False,
            "priceMatch": "NONE",
            "selfTradePreventionMode": "EXPIRE_MAKER",
            "goodTillDate": 0,
            "time": self.time,
            "updateTime": self.update_time or self.time,
        }


@dataclass
class AlgoOrder:
    algo_id: int
    client_algo_id: str
    symbol: str
    side: str
    order_type: str  # STOP_MARKET | TAKE_PROFIT_MARKET
    quantity: Decimal  # zero when close_position
    trigger_price: Decimal
    reduce_only: bool
    close_position: bool
    working_type: str
    create_time: int
    status: str = "NEW"
    update_time: int = 0
    trigger_time: int = 0
    actual_order_id: int | None = None
    actual_price: Decimal = ZERO

    def fires_at(self, price: Decimal) -> bool:
        """Whether ``price`` is at or through the trigger, in the direction of the order."""
        # SELL stop and BUY take-profit fire on the way down; the other two on the way up.
        falling = (self.side == "SELL") == (self.order_type == "STOP_MARKET")
        return price <= self.trigger_price if falling else price >= self.trigger_price

    def to_json(self, price_places: int) -> dict[str, Any]:
        return {
            "algoId": self.algo_id,
            "clientAlgoId": self.client_algo_id,
            "algoType": "CONDITIONAL",
            "orderType": self.order_type,
            "symbol": self.symbol,
            "side": self.side,
            "positionSide": "BOTH",
            "timeInForce": "GTC",
            "quantity": num(self.quantity),
            "algoStatus": self.status,
            "triggerPrice": num(self.trigger_price),
            "price": "0",
            "icebergQuantity": None,
            "selfTradePreventionMode": "EXPIRE_MAKER",
            "workingType": self.working_type,
            "priceMatch": "NONE",
            "closePosition": self.close_position,
            "priceProtect": False,
            "reduceOnly": self.reduce_only,
            "createTime": self.create_time,
            "updateTime": self.update_time or self.create_time,
            "triggerTime": self.trigger_time,
            "goodTillDate": 0,
            "actualOrderId": str(self.actual_order_id) if self.actual_order_id else "",
            "actualPrice": num(self.actual_price, price_places) if self.actual_price else "0",
        }


@dataclass
class Trade:
    trade_id: int
    order_id: int
    symbol: str
    side: str
    price: Decimal
    qty: Decimal
    commission: Decimal
    realized_pnl: Decimal
    time: int
    liquidation: bool = False

    def to_json(self, price_places: int) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "id": self.trade_id,
            "orderId": self.order_id,
            "side": self.side,
            "price": num(self.price, price_places),
            "qty": num(self.qty),
            "realizedPnl": num(self.realized_pnl, 8),
            "quoteQty": num(self.price * self.qty),
            "commission": num(self.commission, 8),
            "commissionAsset": "USDT",
            "time": self.time,
            "positionSide": "BOTH",
            "buyer": self.side == "BUY",
            "maker": False,
        }
