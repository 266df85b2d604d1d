"""Market and account state: one writer (the feed), every service a reader, through Redis.

The feed keeps it from the exchange's WebSocket streams (market streams and the user-data
stream), resynchronised by one REST snapshot on every (re)connect. Services read it here
instead of calling the exchange, so the critical path of an alert is the orders alone.

Freshness is part of every read: market data of a symbol is fresh while its price was
updated within ``feed.max_staleness_seconds`` (mark price arrives every second); the
account is fresh while the feed's account heartbeat is (the feed beats only while the
user-data stream is connected and was resynchronised since the last reconnect). A stale
read raises :class:`StaleState` with the reason code risk refuses entries with.

The models are also the one typed parse of ccxt's structures (``from_ccxt``), so no service
reads a position, order or balance dict itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal

import redis
from pydantic import BaseModel, ConfigDict

from shared.money import Bracket, liquidation_price
from shared.names import (
    STATE_BALANCE_KEY,
    STATE_CANDLES_PREFIX,
    STATE_FEED_KEY,
    STATE_LIVE_CANDLE_PREFIX,
    STATE_ORDERS_KEY,
    STATE_POSITIONS_KEY,
    STATE_PRICES_KEY,
)
from shared.settings import Settings

MARKET_STALE = "market_data_stale"
ACCOUNT_STALE = "account_state_stale"

Side = Literal["LONG", "SHORT"]
OrderKind = Literal["order", "algo"]
# a closed or forming candle as ccxt returns it: [open_time_ms, open, high, low, close, volume]
CandleRow = list[float]

# exchange statuses of an order that can still change the position
OPEN_ORDER_STATUSES = frozenset({"NEW", "PARTIALLY_FILLED", "TRIGGERING"})


_UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def timeframe_ms(timeframe: str) -> int:
    """``5m`` -> 300000 (Binance's kline intervals)."""
    return int(timeframe[:-1]) * _UNIT_MS[timeframe[-1]]


def now_ms() -> int:
    return int(time.time() * 1000)


def dec(value: Any) -> Decimal:
    return Decimal(str(value)) if value not in (None, "") else Decimal(0)


class StaleState(RuntimeError):
    """The state is missing or older than allowed; ``reason`` is the refusal code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _State(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Price(_State):
    symbol: str
    mark: Decimal | None = None
    last: Decimal | None = None
    bid: Decimal | None = None
    ask: Decimal | None = None
    event_ms: int = 0  # the exchange's event time
    updated_ms: int = 0  # when the feed stored it (freshness)

    @property
    def reference(self) -> Decimal:
        """The price to size and check against: last trade, else mark."""
        value = self.last or self.mark
        if value is None:
            raise StaleState(MARKET_STALE, f"{self.symbol}: no price yet")
        return value


class Balance(_State):
    asset: str = "USDT"
    wallet: Decimal = Decimal(0)  # wallet balance (realised), Binance ``wb``
    cross_wallet: Decimal = Decimal(0)  # wallet less isolated margin, Binance ``cw``
    available: Decimal | None = None  # from a REST snapshot only (the stream has no such field)
    updated_ms: int = 0

    @classmethod
    def from_ccxt(cls, balance: Mapping[str, Any], asset: str = "USDT") -> Balance:
        """From ``fetch_balance()`` (``GET /fapi/v3/account``)."""
        info = balance.get("info") or {}
        row: Mapping[str, Any] = next(
            (a for a in info.get("assets", []) if a.get("asset") == asset), {})
        coin = balance.get(asset) or {}
        wallet = dec(row.get("walletBalance") or coin.get("total"))
        cross = dec(row.get("crossWalletBalance") or row.get("walletBalance") or coin.get("free"))
        return cls(asset=asset, wallet=wallet, cross_wallet=cross,
                   available=dec(row.get("availableBalance") or coin.get("free")),
                   updated_ms=now_ms())


class Position(_State):
    symbol: str  # exchange id, e.g. BTCUSDT
    side: Side
    quantity: Decimal  # absolute contracts
    entry_price: Decimal
    isolated_wallet: Decimal = Decimal(0)  # the isolated margin incl. realised changes
    unrealized_pnl: Decimal = Decimal(0)
    margin_type: str = "isolated"
    leverage: int | None = None
    liquidation_price: Decimal | None = None  # the exchange's, when a snapshot gave it
    updated_ms: int = 0

    @property
    def notional(self) -> Decimal:
        return self.quantity * self.entry_price

    def unrealized_at(self, mark: Decimal) -> Decimal:
        return (mark - self.entry_price) * self.quantity * (1 if self.side == "LONG" else -1)

    def liquidation(self, brackets: Sequence[Bracket], leverage: int) -> Decimal:
        """Binance's isolated one-way liquidation price (on the isolated wallet when known)."""
        return liquidation_price(self.side, self.entry_price, self.quantity, leverage, brackets,
                                 self.isolated_wallet if self.isolated_wallet > 0 else None)

    @classmethod
    def from_ccxt(cls, p: Mapping[str, Any]) -> Position | None:
        """From one ``fetch_positions()`` row; None for a flat row."""
        info = p.get("info") or {}
        contracts = dec(p.get("contracts") or info.get("positionAmt"))
        if contracts == 0:
            return None
        amount = dec(info.get("positionAmt"))
        side: Side = ("LONG" if str(p.get("side", "")).lower() == "long" else "SHORT") \
            if p.get("side") else ("LONG" if amount > 0 else "SHORT")
        liq = dec(p.get("liquidationPrice") or info.get("liquidationPrice"))
        return cls(
            symbol=str(info.get("symbol") or p["symbol"]), side=side, quantity=abs(contracts),
            entry_price=dec(p.get("entryPrice") or info.get("entryPrice")),
            isolated_wallet=dec(info.get("isolatedWallet") or p.get("collateral")
                                or p.get("initialMargin")),
            unrealized_pnl=dec(p.get("unrealizedPnl") or info.get("unRealizedProfit")),
            margin_type=str(p.get("marginMode") or "isolated"),
            leverage=int(p["leverage"]) if p.get("leverage") else None,
            liquidation_price=liq if liq > 0 else None, updated_ms=now_ms())


class Order(_State):
    symbol: str
    kind: OrderKind  # "order" (/fapi/v1/order) or "algo" (conditional, /fapi/v1/algoOrder)
    order_id: str
    client_id: str = ""
    type: str = ""  # MARKET, STOP_MARKET, TAKE_PROFIT_MARKET, ...
    side: str = ""  # BUY | SELL
    status: str = ""  # the exchange's: NEW, FILLED, CANCELED, TRIGGERED, FINISHED, ...
    quantity: Decimal = Decimal(0)
    filled: Decimal = Decimal(0)
    avg_price: Decimal | None = None
    trigger_price: Decimal | None = None
    reduce_only: bool = False
    triggered_order_id: str = ""  # an algo order's child order once triggered (``ai``)
    reject_reason: str = ""
    updated_ms: int = 0

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_ORDER_STATUSES

    @classmethod
    def from_ccxt(cls, o: Mapping[str, Any]) -> Order:
        """From a ccxt order (REST answer or ``watch_orders``), plain or algo."""
        info = o.get("info") or {}
        algo = "algoId" in info or "aid" in info
        status = str(info.get("algoStatus") or info.get("status") or info.get("X")
                     or o.get("status") or "").upper()
        trigger = o.get("triggerPrice") or o.get("stopPrice") or info.get("triggerPrice")
        avg = o.get("average") or info.get("avgPrice")
        return cls(
            symbol=str(info.get("symbol") or info.get("s") or o.get("symbol") or ""),
            kind="algo" if algo else "order",
            order_id=str(o.get("id") or info.get("algoId") or info.get("orderId") or ""),
            client_id=str(o.get("clientOrderId") or info.get("clientAlgoId")
                          or info.get("clientOrderId") or ""),
            type=str(info.get("orderType") or info.get("type") or o.get("type") or "").upper(),
            side=str(info.get("side") or o.get("side") or "").upper(),
            status=status, quantity=dec(o.get("amount") or info.get("quantity")),
            filled=dec(o.get("filled")), avg_price=dec(avg) if avg else None,
            trigger_price=dec(trigger) if trigger else None,
            reduce_only=bool(o.get("reduceOnly") or info.get("reduceOnly") in (True, "true")),
            triggered_order_id=str(info.get("actualOrderId") or info.get("ai") or ""),
            reject_reason=str(info.get("rm") or ""), updated_ms=now_ms())


class Account(_State):
    """The account as the feed last knew it; ``as_of_ms`` is its freshness."""

    balance: Balance
    positions: tuple[Position, ...] = ()
    orders: tuple[Order, ...] = ()
    as_of_ms: int = 0

    def equity(self) -> Decimal:
        """Margin balance: wallet plus unrealised PnL."""
        return self.balance.wallet + sum((p.unrealized_pnl for p in self.positions), Decimal(0))

    def available(self) -> Decimal:
        """Free margin for a new isolated position (all our positions are isolated)."""
        cross_upnl = sum((p.unrealized_pnl for p in self.positions
                          if p.margin_type != "isolated"), Decimal(0))
        return self.balance.cross_wallet + min(cross_upnl, Decimal(0))

    def position(self, symbol: str) -> Position | None:
        return next((p for p in self.positions if p.symbol == symbol), None)

    def open_orders(self, symbol: str | None = None, kind: OrderKind | None = None
                    ) -> list[Order]:
        return [o for o in self.orders if o.is_open and (symbol is None or o.symbol == symbol)
                and (kind is None or o.kind == kind)]

    def equity_at(self, prices: Mapping[str, Price]) -> Decimal:
        """Margin balance with each position's unrealised PnL at its mark price.

        The user-data stream reports unrealised PnL only with an account event (a fill, a
        funding fee), not as the price moves, so a cap or a drawdown is marked to the price
        stream instead; a position without a mark keeps its last reported PnL."""
        total = self.balance.wallet
        for p in self.positions:
            price = prices.get(p.symbol)
            mark = (price.mark or price.last) if price is not None else None
            total += p.unrealized_at(mark) if mark else p.unrealized_pnl
        return total


def _loads(raw: str | bytes | None) -> Any:
    return json.loads(raw) if raw else None


class StateWriter:
    """The feed's side: every write is one pipeline round trip."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def prices(self, prices: Iterable[Price]) -> None:
        mapping = {p.symbol: p.model_dump_json() for p in prices}
        if mapping:
            self.redis.hset(STATE_PRICES_KEY, mapping=mapping)  # type: ignore[arg-type]

    def candles(self, symbol: str, timeframe: str, closed: Sequence[CandleRow] | None,
                live: CandleRow | None) -> None:
        """Replace the closed candles (when given) and the forming one."""
        pipe = self.redis.pipeline(transaction=True)
        if closed is not None:
            pipe.set(f"{STATE_CANDLES_PREFIX}{symbol}:{timeframe}", json.dumps(list(closed)))
        if live is not None:
            pipe.set(f"{STATE_LIVE_CANDLE_PREFIX}{symbol}:{timeframe}", json.dumps(live))
        pipe.execute()

    def replace_account(self, account: Account) -> None:
        """A REST snapshot: the whole account at once, atomically."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(STATE_BALANCE_KEY, account.balance.model_dump_json())
        pipe.delete(STATE_POSITIONS_KEY, STATE_ORDERS_KEY)
        if account.positions:
            pipe.hset(STATE_POSITIONS_KEY, mapping={
                p.symbol: p.model_dump_json() for p in account.positions})
        live = [o for o in account.orders if o.is_open]
        if live:
            pipe.hset(STATE_ORDERS_KEY, mapping={
                _order_field(o): o.model_dump_json() for o in live})
        pipe.hset(STATE_FEED_KEY, "account_synced_ms", account.as_of_ms or now_ms())
        pipe.execute()

    def apply(self, balance: Balance | None = None, positions: Iterable[Position] = (),
              flat: Iterable[str] = (), orders: Iterable[Order] = ()) -> None:
        """An incremental update from the user-data stream."""
        pipe = self.redis.pipeline(transaction=True)
        if balance is not None:
            pipe.set(STATE_BALANCE_KEY, balance.model_dump_json())
        for p in positions:
            pipe.hset(STATE_POSITIONS_KEY, p.symbol, p.model_dump_json())
        for symbol in flat:
            pipe.hdel(STATE_POSITIONS_KEY, symbol)
        for o in orders:
            if o.is_open:
                pipe.hset(STATE_ORDERS_KEY, _order_field(o), o.model_dump_json())
            else:
                pipe.hdel(STATE_ORDERS_KEY, _order_field(o))
        pipe.execute()

    def heartbeat(self, *, market: bool = False, account: bool = False,
                  at_ms: int | None = None) -> None:
        at = at_ms or now_ms()
        pipe = self.redis.pipeline(transaction=False)
        if market:
            pipe.hset(STATE_FEED_KEY, "market_heartbeat_ms", at)
        if account:
            pipe.hset(STATE_FEED_KEY, "account_heartbeat_ms", at)
        pipe.execute()

    def account_synced(self) -> bool:
        """False when the marker of the last snapshot is gone (Redis lost its data)."""
        return bool(self.redis.hexists(STATE_FEED_KEY, "account_synced_ms"))

    def mark_down(self, *, market: bool = False, account: bool = False) -> None:
        """The streams dropped: readers see stale state at once, not after the timeout."""
        fields = (["market_heartbeat_ms"] if market else []) + \
            (["account_heartbeat_ms"] if account else [])
        if fields:
            self.redis.hdel(STATE_FEED_KEY, *fields)


def _order_field(o: Order) -> str:
    return f"{o.kind}:{o.order_id}"


class StateReader:
    """Every service's side. Reads are one round trip; stale state raises."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.max_age_ms = int(settings.feed.max_staleness_seconds * 1000)

    # --- market ---
    def price(self, symbol: str, *, now: int | None = None) -> Price:
        raw = self.redis.hget(STATE_PRICES_KEY, symbol)
        if not raw:
            raise StaleState(MARKET_STALE, f"{symbol}: no market data")
        price = Price.model_validate_json(raw)
        age = (now or now_ms()) - price.updated_ms
        if age > self.max_age_ms:
            raise StaleState(MARKET_STALE, f"{symbol}: last price {age} ms old")
        return price

    def prices(self) -> dict[str, Price]:
        """Every symbol's last price, fresh or not (for views; check ``updated_ms``)."""
        return {str(k): Price.model_validate_json(v)
                for k, v in self.redis.hgetall(STATE_PRICES_KEY).items()}

    def candles(self, symbol: str, timeframe: str, limit: int) -> list[CandleRow]:
        """The last ``limit`` candles, the forming one last (as ``fetch_ohlcv``)."""
        closed_raw, live_raw = self.redis.mget(f"{STATE_CANDLES_PREFIX}{symbol}:{timeframe}",
                                               f"{STATE_LIVE_CANDLE_PREFIX}{symbol}:{timeframe}")
        rows: list[CandleRow] = _loads(closed_raw) or []
        live: CandleRow | None = _loads(live_raw)
        if live is not None:
            rows = [r for r in rows if r[0] < live[0]] + [live]
        if not rows:
            raise StaleState(MARKET_STALE, f"{symbol} {timeframe}: no candles")
        return rows[-limit:]

    # --- account ---
    def account(self, *, now: int | None = None, fresh: bool = True) -> Account:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hget(STATE_FEED_KEY, "account_heartbeat_ms")
        pipe.get(STATE_BALANCE_KEY)
        pipe.hvals(STATE_POSITIONS_KEY)
        pipe.hvals(STATE_ORDERS_KEY)
        beat, balance, positions, orders = pipe.execute()
        as_of = int(beat or 0)
        if fresh:
            age = (now or now_ms()) - as_of
            if not beat or balance is None or age > self.max_age_ms:
                raise StaleState(ACCOUNT_STALE, "no account state" if not beat or balance is None
                                 else f"account state {age} ms old")
        return Account(
            balance=Balance.model_validate_json(balance) if balance else Balance(),
            positions=tuple(Position.model_validate_json(p) for p in positions),
            orders=tuple(Order.model_validate_json(o) for o in orders), as_of_ms=as_of)

    def freshness(self, now: int | None = None) -> dict[str, Any]:
        """Ages in ms (None = never) for health checks and the dashboard."""
        now = now or now_ms()
        feed = self.redis.hgetall(STATE_FEED_KEY)
        prices = self.prices()

        def age(value: Any) -> int | None:
            return now - int(value) if value else None

        market = {s: now - p.updated_ms for s, p in prices.items()}
        return {
            "max_staleness_ms": self.max_age_ms,
            "market_heartbeat_age_ms": age(feed.get("market_heartbeat_ms")),
            "account_heartbeat_age_ms": age(feed.get("account_heartbeat_ms")),
            "account_synced_age_ms": age(feed.get("account_synced_ms")),
            "price_age_ms": market,
            "market_fresh": bool(market) and max(market.values()) <= self.max_age_ms,
            "account_fresh": (age(feed.get("account_heartbeat_ms")) or 10**12)
            <= self.max_age_ms,
        }
