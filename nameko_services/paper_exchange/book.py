"""The account book: wallet, per-symbol settings, positions, orders, trades, id counter.

:class:`Account` owns the state and its write-through persistence; the trading rules live
in :class:`~.engine.MatchingEngine`, which extends it. Every mutation happens inside
``with self.write():`` and marks what it changed; when the outermost ``write`` block ends
(still inside the engine lock) the changed rows go to the store in one transaction, so
an order event costs one small SQLite commit and nesting (a trigger placing a market
order) still commits once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal

from shared.money import DEFAULT_BRACKETS, Bracket

from .events import Listener, UserEvent
from .market import SYMBOLS, SymbolSpec
from .models import ZERO, AlgoOrder, ApiError, Order, Position, Trade
from .store import Changes, PaperStore, Snapshot

log = logging.getLogger(__name__)
DEFAULT_LEVERAGE = 20
LIQUIDATION_PREFIX = "autoclose-"


def now_ms() -> int:
    return int(time.time() * 1000)


def spec_of(symbol: str) -> SymbolSpec:
    spec = SYMBOLS.get(symbol)
    if spec is None:
        raise ApiError(-1121, "Invalid symbol.")
    return spec


def max_notional(brackets: tuple[Bracket, ...], leverage: int) -> Decimal:
    """Largest position notional Binance allows at ``leverage`` (the tier table's cap)."""
    caps = [b.notional_cap for b in brackets if b.initial_leverage >= leverage]
    return max(caps) if caps else ZERO


class Account:
    def __init__(self, starting_balance: Decimal, clock: Callable[[], int] = now_ms,
                 store: PaperStore | None = None) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.starting_balance = starting_balance
        self.store = store
        self._depth = 0
        self.listeners: list[Listener] = []
        self._pending: list[UserEvent] = []
        self._clear_dirty()
        snapshot = store.load() if store is not None else None
        if snapshot is None:
            self.reset()
        else:
            self._restore(snapshot)

    # --- state ---------------------------------------------------------------------
    def reset(self) -> None:
        """A fresh account; with a store, the file is emptied and the fresh book saved."""
        with self.write():
            self.wallet = self.starting_balance
            self.positions: dict[str, Position] = {s: Position(s) for s in SYMBOLS}
            self.leverage: dict[str, int] = dict.fromkeys(SYMBOLS, DEFAULT_LEVERAGE)
            # Binance accounts start in CROSSED; only ISOLATED is simulated (see set_margin_type)
            self.margin_type: dict[str, str] = dict.fromkeys(SYMBOLS, "CROSSED")
            self.orders: dict[int, Order] = {}
            self.client_ids: dict[str, int] = {}
            self.algos: dict[int, AlgoOrder] = {}
            self.trades: list[Trade] = []
            self.update_time = self.clock()
            self._next_id = 1
            if self.store is not None:
                self.store.clear()
            self._clear_dirty()
            for symbol in SYMBOLS:
                self._touch_symbol(symbol)
                self._touch_position(symbol)

    def _restore(self, snap: Snapshot) -> None:
        with self.lock:
            self.wallet = snap.wallet
            self.positions = {s: snap.positions.get(s, Position(s)) for s in SYMBOLS}
            self.leverage = {s: snap.leverage.get(s, DEFAULT_LEVERAGE) for s in SYMBOLS}
            self.margin_type = {s: snap.margin_type.get(s, "CROSSED") for s in SYMBOLS}
            self.orders = snap.orders
            self.client_ids = {}
            for order in sorted(snap.orders.values(), key=lambda o: o.order_id):
                if not order.client_order_id.startswith(LIQUIDATION_PREFIX):
                    self.client_ids.setdefault(order.client_order_id, order.order_id)
            self.algos = snap.algos
            self.trades = snap.trades
            self.update_time = snap.update_time
            self._next_id = snap.next_id

    def _new_id(self) -> int:
        self._next_id += 1
        self._dirty = True
        return self._next_id

    # --- write-through -------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[None]:
        """Hold the lock; persist what changed when the outermost block exits."""
        with self.lock:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._flush()
                    self._deliver()

    def _emit(self, event: UserEvent) -> None:
        self._pending.append(event)

    def _deliver(self) -> None:
        # Only after the flush succeeded (an exception skips this): listeners never hear of
        # a change that is not durable; a failed flush keeps its events for the next one.
        if not self._pending:
            return
        events, self._pending = self._pending, []
        for listener in self.listeners:
            for event in events:
                try:
                    listener(event)
                except Exception:  # a broken listener must not undo a committed trade
                    log.exception("engine listener failed on %s", type(event).__name__)

    def _clear_dirty(self) -> None:
        self._dirty = False
        self._dirty_symbols: set[str] = set()
        self._dirty_positions: set[str] = set()
        self._dirty_orders: set[int] = set()
        self._dirty_algos: set[int] = set()
        self._new_trades: list[Trade] = []

    def _flush(self) -> None:
        if not self._dirty:
            return
        if self.store is not None:
            # On failure the marks stay, so the next event writes these rows again.
            self.store.save(Changes(
                wallet=self.wallet, next_id=self._next_id, update_time=self.update_time,
                symbols=[(s, self.leverage[s], self.margin_type[s])
                         for s in sorted(self._dirty_symbols)],
                positions=[self.positions[s] for s in sorted(self._dirty_positions)],
                orders=[self.orders[i] for i in sorted(self._dirty_orders)],
                algos=[self.algos[i] for i in sorted(self._dirty_algos)],
                trades=list(self._new_trades)))
        self._clear_dirty()

    def _touch_symbol(self, symbol: str) -> None:
        self._dirty = True
        self._dirty_symbols.add(symbol)

    def _touch_position(self, symbol: str) -> None:
        self._dirty = True
        self._dirty_positions.add(symbol)

    def _touch_order(self, order: Order) -> None:
        self._dirty = True
        self.orders[order.order_id] = order
        self._dirty_orders.add(order.order_id)

    def _touch_algo(self, algo: AlgoOrder) -> None:
        self._dirty = True
        self.algos[algo.algo_id] = algo
        self._dirty_algos.add(algo.algo_id)

    def _add_trade(self, trade: Trade) -> None:
        self._dirty = True
        self.trades.append(trade)
        self._new_trades.append(trade)

    # --- account settings ----------------------------------------------------------
    def set_leverage(self, symbol: str, leverage: int) -> dict[str, object]:
        spec_of(symbol)
        brackets = DEFAULT_BRACKETS[symbol]
        if not 1 <= leverage <= brackets[0].initial_leverage:
            raise ApiError(-4028, f"Leverage {leverage} is not valid")
        with self.write():
            pos = self.positions[symbol]
            if pos.amount and abs(pos.amount) * pos.entry_price > max_notional(brackets, leverage):
                raise ApiError(-2027, "Exceeded the maximum allowable position at current "
                                      "leverage.")
            self.leverage[symbol] = leverage
            self._touch_symbol(symbol)
        return {"symbol": symbol, "leverage": leverage,
                "maxNotionalValue": str(int(max_notional(brackets, leverage)))}

    def set_margin_type(self, symbol: str, margin_type: str) -> dict[str, object]:
        spec_of(symbol)
        if margin_type not in ("ISOLATED", "CROSSED"):
            raise ApiError(-1130, "Data sent for parameter 'marginType' is not valid.")
        with self.write():
            if self.margin_type[symbol] == margin_type:
                raise ApiError(-4046, "No need to change margin type.")
            if any(a.symbol == symbol and a.status == "NEW" for a in self.algos.values()):
                raise ApiError(-4047, "Margin type cannot be changed if there exists open "
                                      "orders.")
            if self.positions[symbol].amount:
                raise ApiError(-4048, "Margin type cannot be changed if there exists position.")
            if margin_type == "CROSSED":
                # Positions are always margined as isolated; pretending to switch would lie.
                raise ApiError(-1130, "Data sent for parameter 'marginType' is not valid: "
                                      "the paper exchange supports ISOLATED only.")
            self.margin_type[symbol] = margin_type
            self._touch_symbol(symbol)
        return {"code": 200, "msg": "success"}

    # --- balances ------------------------------------------------------------------
    def isolated_total(self) -> Decimal:
        return sum((p.isolated_wallet for p in self.positions.values()), ZERO)

    def available(self) -> Decimal:
        return self.wallet - self.isolated_total()
