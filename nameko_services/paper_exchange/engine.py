"""Order and position engine: one-way mode, isolated margin, one USDT wallet.

Every public method takes the engine lock (mutations through ``Account.write``, which
persists what changed), so HTTP worker threads and the ticker thread see a consistent
book. The engine reads prices from :class:`Market` (which has its own
lock) but the market never calls back into the engine, so the two locks cannot deadlock.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import replace
from decimal import ROUND_HALF_UP, Decimal

from shared.money import (
    DEFAULT_BRACKETS,
    Side,
    liquidation_price,
    round_to_step,
)

from .book import LIQUIDATION_PREFIX, Account, max_notional, now_ms, spec_of
from .events import AccountEvent, AlgoEvent, OrderEvent
from .market import SYMBOLS, Market, SymbolSpec
from .models import ZERO, AlgoOrder, ApiError, Order, Position, Trade
from .store import PaperStore

__all__ = ["ALGO_TYPES", "STOP_TYPES", "MatchingEngine", "max_notional", "now_ms", "spec_of"]

MAX_OPEN_ALGO_ORDERS = 200  # Binance's conditional-order limit across all symbols
_CLIENT_ID = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
STOP_TYPES = frozenset({"STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                        "TRAILING_STOP_MARKET"})
ALGO_TYPES = frozenset({"STOP_MARKET", "TAKE_PROFIT_MARKET"})


class MatchingEngine(Account):
    def __init__(self, market: Market, starting_balance: Decimal, taker_fee: Decimal,
                 slippage: Decimal = ZERO, clock: Callable[[], int] = now_ms,
                 store: PaperStore | None = None) -> None:
        self.market = market
        self.taker_fee = taker_fee
        self.slippage = slippage
        super().__init__(starting_balance, clock, store)

    # --- validation helpers --------------------------------------------------------
    @staticmethod
    def _check_qty(spec: SymbolSpec, qty: Decimal) -> None:
        if qty <= 0:
            raise ApiError(-4003, "Quantity less than or equal to zero.")
        if qty % spec.step_size != 0:
            raise ApiError(-1111, "Precision is over the maximum defined for this asset.")
        if qty < spec.min_qty or qty > spec.max_qty:
            raise ApiError(-1013, "Filter failure: MARKET_LOT_SIZE")

    def _client_id(self, given: str | None, registry: dict[str, int]) -> str:
        if given is None or given == "":
            return "paper_" + uuid.uuid4().hex[:22]
        if not _CLIENT_ID.match(given):
            raise ApiError(-4015, "Client order id is not valid.")
        if given in registry:
            raise ApiError(-4116, "ClientOrderId is duplicated.")
        return given

    def fill_price(self, symbol: str, side: str) -> Decimal:
        return self.price_for(symbol, side, self.market.price(symbol))

    def price_for(self, symbol: str, side: str, base: Decimal) -> Decimal:
        """The taker fill at market price ``base``: the book's best ask (BUY) or bid (SELL)."""
        spec = SYMBOLS[symbol]
        factor = 1 + self.slippage if side == "BUY" else 1 - self.slippage
        return round_to_step(base * factor, spec.tick_size, ROUND_HALF_UP).quantize(spec.tick_size)

    # --- market orders -------------------------------------------------------------
    def place_market(self, symbol: str, side: str, qty: Decimal | None, reduce_only: bool,
                     client_order_id: str | None, close_position: bool = False,
                     internal: bool = False) -> Order:
        """Fill a MARKET order at once at the simulated price (+ slippage), taker fee."""
        spec = spec_of(symbol)
        if side not in ("BUY", "SELL"):
            raise ApiError(-1130, "Data sent for parameter 'side' is not valid.")
        with self.write():
            pos = self.positions[symbol]
            if close_position:
                qty = abs(pos.amount)
                reduce_only = True
            if qty is None:
                raise ApiError(-1102, "Mandatory parameter 'quantity' was not sent, was empty/"
                                      "null, or malformed.")
            if not close_position:
                self._check_qty(spec, qty)
            if internal:
                cid = client_order_id or "paper_" + uuid.uuid4().hex[:22]
            else:
                cid = self._client_id(client_order_id, self.client_ids)
            direction = 1 if side == "BUY" else -1
            if reduce_only:
                if pos.amount == 0 or (pos.amount > 0) == (direction > 0):
                    raise ApiError(-2022, "ReduceOnly Order is rejected.")
                qty = min(qty, abs(pos.amount))
            price = self.fill_price(symbol, side)
            notional = qty * price
            if not reduce_only and notional < spec.min_notional:
                raise ApiError(-4164, f"Order's notional must be no smaller than "
                                      f"{spec.min_notional} (unless you choose reduce only).")
            opposite = pos.amount != 0 and (pos.amount > 0) != (direction > 0)
            closing = min(qty, abs(pos.amount)) if opposite else ZERO
            opening = qty - closing
            fee = notional * self.taker_fee
            lev = self.leverage[symbol]
            if opening > 0:
                new_abs = opening if opposite else abs(pos.amount) + opening
                if new_abs * price > max_notional(DEFAULT_BRACKETS[symbol], lev):
                    raise ApiError(-2027, "Exceeded the maximum allowable position at current "
                                          "leverage.")
                released = pos.isolated_wallet if opposite else ZERO
                realized = pos.unrealized(price) if opposite else ZERO
                if opening * price / lev + fee > self.available() + released + realized:
                    raise ApiError(-2019, "Margin is insufficient.")
            order = Order(self._new_id(), cid, symbol, side, "MARKET", qty, reduce_only,
                          self.clock(), close_position=close_position)
            self._execute(order, pos, price, closing, opening, fee)
            return order

    def _execute(self, order: Order, pos: Position, price: Decimal, closing: Decimal,
                 opening: Decimal, fee: Decimal) -> None:
        now = order.time
        self._emit(OrderEvent(replace(order), "NEW", now))
        direction = 1 if order.side == "BUY" else -1
        realized = ZERO
        if closing:
            realized = closing * (price - pos.entry_price) * (1 if pos.amount > 0 else -1)
            pos.isolated_wallet -= pos.isolated_wallet * closing / abs(pos.amount)
            pos.amount += direction * closing
            self.wallet += realized
            if pos.amount == 0:
                pos.entry_price = ZERO
                pos.isolated_wallet = ZERO
        if opening:
            total = abs(pos.amount) + opening
            pos.entry_price = (abs(pos.amount) * pos.entry_price + opening * price) / total
            pos.amount += direction * opening
            pos.isolated_wallet += opening * price / self.leverage[order.symbol]
        self.wallet -= fee
        pos.update_time = self.update_time = now
        self._touch_position(pos.symbol)
        order.status = "FILLED"
        order.executed_qty = order.orig_qty = closing + opening
        order.avg_price = price
        order.cum_quote = price * order.executed_qty
        order.update_time = now
        self._touch_order(order)
        self.client_ids.setdefault(order.client_order_id, order.order_id)
        trade = Trade(self._new_id(), order.order_id, order.symbol, order.side, price,
                      order.executed_qty, fee, realized, now)
        self._add_trade(trade)
        self._emit_fill(order, trade)

    def _emit_fill(self, order: Order, trade: Trade) -> None:
        """ORDER_TRADE_UPDATE (TRADE) then ACCOUNT_UPDATE, as Binance sends them."""
        self._emit(OrderEvent(replace(order), "TRADE", trade.time, replace(trade)))
        pos = self.positions[order.symbol]
        self._emit(AccountEvent(
            trade.time, self.wallet, self.available(), ZERO, replace(pos),
            self.market.mark_price(order.symbol),
            sum((t.realized_pnl for t in self.trades if t.symbol == order.symbol), ZERO)))

    def find_order(self, symbol: str, order_id: int | None, client_id: str | None) -> Order:
        spec_of(symbol)
        with self.lock:
            if order_id is None and client_id is not None:
                order_id = self.client_ids.get(client_id)
            order = self.orders.get(order_id) if order_id is not None else None
            if order is None or order.symbol != symbol:
                raise ApiError(-2013, "Order does not exist.")
            return order

    def cancel_order(self, symbol: str, order_id: int | None, client_id: str | None) -> Order:
        try:
            order = self.find_order(symbol, order_id, client_id)
        except ApiError as exc:  # Binance: GET says -2013, DELETE says -2011
            raise ApiError(-2011, "Unknown order sent.") from exc
        if order.status != "NEW":  # market orders are filled before anyone could cancel
            raise ApiError(-2011, "Unknown order sent.")
        return order  # pragma: no cover - no resting order types are simulated

    # --- conditional (algo) orders -------------------------------------------------
    def place_algo(self, symbol: str, side: str, order_type: str, qty: Decimal | None,
                   trigger: Decimal | None, reduce_only: bool, close_position: bool,
                   client_algo_id: str | None, working_type: str) -> AlgoOrder:
        spec = spec_of(symbol)
        if order_type not in ALGO_TYPES:
            raise ApiError(-1116, "Invalid orderType: the paper exchange supports "
                                  "STOP_MARKET and TAKE_PROFIT_MARKET conditional orders.")
        if side not in ("BUY", "SELL"):
            raise ApiError(-1130, "Data sent for parameter 'side' is not valid.")
        if trigger is None:
            raise ApiError(-1102, "Mandatory parameter 'triggerPrice' was not sent, was "
                                  "empty/null, or malformed.")
        if trigger <= 0 or trigger % spec.tick_size != 0:
            raise ApiError(-4014, "Price not increased by tick size.")
        if close_position:
            if qty is not None:
                raise ApiError(-4137, "Quantity must be zero with closePosition equals true.")
        elif qty is None:
            raise ApiError(-1102, "Mandatory parameter 'quantity' was not sent, was empty/"
                                  "null, or malformed.")
        else:
            self._check_qty(spec, qty)
        with self.write():
            registry = {a.client_algo_id: a.algo_id for a in self.algos.values()
                        if a.status == "NEW"}
            cid = self._client_id(client_algo_id, registry)
            if len(registry) >= MAX_OPEN_ALGO_ORDERS:
                raise ApiError(-4045, "Reach max stop order limit.")
            algo = AlgoOrder(self._new_id(), cid, symbol, side, order_type, qty or ZERO,
                             trigger, reduce_only or close_position, close_position,
                             working_type, self.clock())
            if algo.fires_at(self.market.mark_price(symbol)):
                raise ApiError(-2021, "Order would immediately trigger.")
            self._touch_algo(algo)
            self._emit(AlgoEvent(replace(algo), algo.create_time))
            return algo

    def find_algo(self, algo_id: int | None, client_algo_id: str | None) -> AlgoOrder:
        with self.lock:
            if algo_id is not None:
                algo = self.algos.get(algo_id)
            else:
                # Client ids may be reused once an algo order is done: prefer the newest.
                matches = [a for a in self.algos.values() if a.client_algo_id == client_algo_id]
                algo = matches[-1] if matches else None
            if algo is None:
                raise ApiError(-2013, "Order does not exist.")
            return algo

    def cancel_algo(self, algo_id: int | None, client_algo_id: str | None) -> AlgoOrder:
        with self.write():
            try:
                algo = self.find_algo(algo_id, client_algo_id)
            except ApiError as exc:
                raise ApiError(-2011, "Unknown order sent.") from exc
            if algo.status != "NEW":
                raise ApiError(-2011, "Unknown order sent.")
            algo.status = "CANCELED"
            algo.update_time = self.clock()
            self._touch_algo(algo)
            self._emit(AlgoEvent(replace(algo), algo.update_time))
            return algo

    def open_algos(self, symbol: str | None) -> list[AlgoOrder]:
        with self.lock:
            return [a for a in self.algos.values()
                    if a.status == "NEW" and (symbol is None or a.symbol == symbol)]

    # --- price events --------------------------------------------------------------
    def on_mark(self, symbol: str, mark: Decimal) -> None:
        """Run triggers, then liquidation: on a gap the path crosses the stop first."""
        with self.write():
            for algo in self.open_algos(symbol):
                if algo.fires_at(mark):
                    self._trigger(algo)
            self._maybe_liquidate(symbol, mark)

    def _trigger(self, algo: AlgoOrder) -> None:
        now = self.clock()
        algo.trigger_time = algo.update_time = now
        qty = None if algo.close_position else algo.quantity
        mark = len(self._pending)  # the child order's events follow TRIGGERING/TRIGGERED
        try:
            order = self.place_market(algo.symbol, algo.side, qty, algo.reduce_only,
                                      algo.client_algo_id, algo.close_position, internal=True)
        except ApiError as exc:
            # Binance keeps SL/TP after the position is gone; they expire when they fire.
            # Any other refusal of the child order (margin, size) rejects the algo order.
            algo.status = "EXPIRED" if exc.code == -2022 else "REJECTED"
            self._touch_algo(algo)
            self._emit(AlgoEvent(replace(algo), now, exc.msg))
            return
        algo.actual_order_id = order.order_id
        algo.actual_price = order.avg_price
        self._pending[mark:mark] = [AlgoEvent(replace(algo, status=status), now)
                                    for status in ("TRIGGERING", "TRIGGERED")]
        algo.status = "FINISHED"
        self._touch_algo(algo)
        self._emit(AlgoEvent(replace(algo), now))

    def liquidation_price(self, symbol: str) -> Decimal | None:
        with self.lock:
            pos = self.positions[symbol]
            if pos.amount == 0:
                return None
            side: Side = "LONG" if pos.amount > 0 else "SHORT"
            return liquidation_price(side, pos.entry_price, abs(pos.amount),
                                     self.leverage[symbol], DEFAULT_BRACKETS[symbol],
                                     wallet_balance=pos.isolated_wallet)

    def _maybe_liquidate(self, symbol: str, mark: Decimal) -> None:
        pos = self.positions[symbol]
        liq = self.liquidation_price(symbol)
        if liq is None:
            return
        if (pos.amount > 0 and (liq <= 0 or mark > liq)) or (pos.amount < 0 and mark < liq):
            return
        now = self.clock()
        qty = abs(pos.amount)
        side = "SELL" if pos.amount > 0 else "BUY"
        realized = pos.unrealized(liq)
        lost = pos.isolated_wallet
        # Equity left at the liquidation price (the maintenance margin) goes to the
        # insurance fund, booked as the trade's commission: the wallet loses exactly `lost`.
        clearance = lost + realized
        order = Order(self._new_id(), f"{LIQUIDATION_PREFIX}{now}", symbol, side, "MARKET",
                      qty, True, now, status="FILLED", executed_qty=qty, avg_price=liq,
                      cum_quote=liq * qty, update_time=now)
        self._touch_order(order)
        trade = Trade(self._new_id(), order.order_id, symbol, side, liq, qty, clearance,
                      realized, now, liquidation=True)
        self._add_trade(trade)
        self.wallet -= lost
        pos.amount = pos.entry_price = pos.isolated_wallet = ZERO
        pos.update_time = self.update_time = now
        self._touch_position(symbol)
        self._emit_fill(order, trade)

    def user_trades(self, symbol: str, start: int | None, end: int | None, limit: int,
                    from_id: int | None) -> list[Trade]:
        with self.lock:
            rows = [t for t in self.trades if t.symbol == symbol
                    and (start is None or t.time >= start) and (end is None or t.time <= end)
                    and (from_id is None or t.trade_id >= from_id)]
        return rows[:limit] if from_id is not None or start is not None else rows[-limit:]
