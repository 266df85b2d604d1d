"""Exchange operations execute builds on: pre-flight, bracket orders, order lookups,
flattening and PnL settlement from the exchange's own trade records.

Every answer is parsed once, into :mod:`shared.state` models (through the gateway).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import ccxt
import eventlet
import eventlet.patcher

from nameko_services.execute.store import LegResult, OrderRecord, TradeStore
from shared.market import BracketsUnavailable, ExchangeGateway, ExchangeUnavailable, to_decimal
from shared.money import Bracket
from shared.settings import Settings
from shared.state import Order

log = logging.getLogger(__name__)

T = TypeVar("T")

BRACKET_TYPES = {"stop_loss": "STOP_MARKET", "take_profit": "TAKE_PROFIT_MARKET"}
BRACKETS_TTL_S = 3600.0  # leverage tiers change rarely; refreshed off the order path


class PreflightError(RuntimeError):
    """The exchange account is not set up as configured; nothing may be sent."""


def order_side(side: str, closing: bool = False) -> str:
    buy = side == "LONG"
    return ("sell" if buy else "buy") if closing else ("buy" if buy else "sell")


def is_duplicate_id(exc: BaseException) -> bool:
    """-4116: the client id was used already, i.e. our earlier attempt reached the exchange."""
    return isinstance(exc, ccxt.ExchangeError) and ("-4116" in str(exc)
                                                     or "uplicate" in str(exc))


def concurrently(*calls: Callable[[], T]) -> list[T | BaseException]:
    """Run ``calls`` at once; each one's result or the exception it raised, in order.

    Inside a service (eventlet monkey-patched) the calls are green threads, so their HTTP
    requests are in flight together; elsewhere (tests, scripts) they are OS threads.
    """

    def capture(fn: Callable[[], T]) -> T | BaseException:
        try:
            return fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, who decides
            return exc

    if not calls:  # e.g. a redelivery that found every leg already on the exchange
        return []
    if len(calls) == 1:
        return [capture(calls[0])]
    if eventlet.patcher.is_monkey_patched("socket"):
        threads = [eventlet.spawn(capture, fn) for fn in calls[1:]]
        first = capture(calls[0])
        return [first, *(t.wait() for t in threads)]
    results: list[T | BaseException] = [RuntimeError("not run")] * len(calls)

    def run(i: int) -> None:
        results[i] = capture(calls[i])

    workers = [threading.Thread(target=run, args=(i,), daemon=True)
               for i in range(1, len(calls))]
    for w in workers:
        w.start()
    run(0)
    for w in workers:
        w.join()
    return results


@dataclass(frozen=True)
class Leg:
    kind: str  # stop_loss | take_profit
    client_id: str
    trigger: Decimal


SETTLE_ASSET = "USDT"


@dataclass(frozen=True)
class Settlement:
    exit_price: Decimal | None
    realized_pnl: Decimal  # net of ``fees``
    fees: Decimal  # USDT, fees paid in another asset converted at its price
    closed_quantity: Decimal
    # fees in another asset whose price was not to be had: kept apart, never netted
    unconverted_fees: tuple[tuple[str, Decimal], ...] = ()


@dataclass(frozen=True)
class Fill:
    order: Order
    at_ms: int  # the exchange's time of the fill


class ExchangeOps:
    def __init__(self, settings: Settings, gateway: ExchangeGateway, store: TradeStore) -> None:
        self.settings = settings
        self.gw = gateway
        self.store = store
        self._prepared: set[str] = set()
        self._account_checked = False
        self._brackets: dict[str, tuple[float, tuple[Bracket, ...]]] = {}

    # --- pre-flight ---
    def is_prepared(self, symbol: str) -> bool:
        return symbol in self._prepared

    def preflight(self, symbol: str, *, force: bool = False) -> None:
        """One-way mode, single-asset margin, ISOLATED and the leverage, set then read back.

        Done once per symbol and process (at start-up, or at first use after an outage);
        also loads the markets and the leverage tiers, so the order path needs no reads.
        Raises :class:`PreflightError` naming the mismatch; the caller blocks the symbol.
        """
        if symbol in self._prepared and not force:
            return
        self._prepared.discard(symbol)
        if force:
            self._account_checked = False
        client, want = self.gw.client, self.settings.leverage.leverage
        self.gw.ensure_markets()
        if not self._account_checked:
            if self.gw.call(client.fapiPrivateGetPositionSideDual).get("dualSidePosition"):
                self.gw.call(client.fapiPrivatePostPositionSideDual,
                             {"dualSidePosition": "false"})
            dual = self.gw.call(client.fapiPrivateGetPositionSideDual).get("dualSidePosition")
            if dual in (True, "true"):
                raise PreflightError("account is in hedge mode; one-way mode is required")
            multi = self.gw.call(client.fapiPrivateGetMultiAssetsMargin)
            if multi.get("multiAssetsMargin") in (True, "true"):
                raise PreflightError("multi-assets margin is on; single-asset is required")
            self._account_checked = True
        self.gw.call(client.set_leverage, want, symbol)
        with contextlib.suppress(ccxt.MarginModeAlreadySet):
            self.gw.call(client.set_margin_mode, "isolated", symbol)
        config = self.gw.call(client.fapiPrivateGetSymbolConfig, {"symbol": symbol})
        row = config[0] if isinstance(config, list) and config else config
        leverage, margin = int(row.get("leverage", 0)), str(row.get("marginType", ""))
        if leverage != want or margin.upper() != "ISOLATED":
            raise PreflightError(f"{symbol}: read back leverage {leverage} / {margin}, "
                                 f"want {want} / ISOLATED")
        try:
            self.refresh_brackets(symbol)
        except BracketsUnavailable as exc:
            raise PreflightError(str(exc)) from exc
        self._prepared.add(symbol)

    def brackets(self, symbol: str) -> tuple[Bracket, ...]:
        """The symbol's leverage tiers, as loaded at pre-flight (never a read on the way)."""
        hit = self._brackets.get(symbol)
        return hit[1] if hit is not None else self.refresh_brackets(symbol)

    def refresh_brackets(self, symbol: str, max_age_s: float = 0.0) -> tuple[Bracket, ...]:
        hit = self._brackets.get(symbol)
        if hit is not None and time.monotonic() - hit[0] < max_age_s:
            return hit[1]
        self.gw.invalidate(f"brackets:{symbol}")
        tiers = self.gw.brackets(symbol)
        self._brackets[symbol] = (time.monotonic(), tiers)
        return tiers

    def refresh_reference(self) -> None:
        """Reload leverage tiers older than an hour (the sweep calls this, not an order)."""
        for symbol in list(self._brackets):
            self.refresh_brackets(symbol, BRACKETS_TTL_S)

    # --- lookups ---
    def find_order(self, symbol: str, cid: str, *, trigger: bool,
                   protective: bool = False) -> Order | None:
        return self.gw.order(symbol, cid, algo=trigger, protective=protective)

    # --- orders ---
    def market(self, symbol: str, side: str, qty: Decimal, cid: str, *,
               reduce_only: bool = False, protective: bool = False) -> Fill:
        """A market order; its RESULT answer carries the fill. -4116 -> our earlier one.

        ``protective`` (a close that protects money): past an open circuit, with retries.
        """
        params: dict[str, Any] = {"clientOrderId": cid}
        if reduce_only:
            params["reduceOnly"] = True
        try:
            raw = self.gw.call_with(protective, self.gw.client.create_order, symbol, "market",
                                side, float(qty), None, params)
        except ccxt.ExchangeError as exc:
            if not is_duplicate_id(exc):
                raise
            found = self.find_order(symbol, cid, trigger=False, protective=protective)
            if found is None:
                raise
            return Fill(found, int(time.time() * 1000))
        return Fill(Order.from_ccxt(raw),
                    int(raw.get("lastTradeTimestamp") or raw.get("timestamp") or 0))

    def arm(self, symbol: str, side: str, qty: Decimal, legs: Iterable[Leg], *,
            look_first: bool) -> dict[str, Order | BaseException]:
        """Reduce-only algo orders for ``legs``, sent at once; each leg's answer or error.

        Never sent twice: with ``look_first`` (a redelivery or a restart) an order the
        exchange already holds is taken as it is, and a -4116 answer (duplicate client id)
        means "look it up", not a failure. The caller books the results (:meth:`booked`).
        """
        close_side = order_side(side, closing=True)
        pending = list(legs)
        results: dict[str, Order | BaseException] = {}
        if look_first:
            for leg in list(pending):
                existing = self.find_order(symbol, leg.client_id, trigger=True)
                if existing is not None and existing.is_open:
                    results[leg.kind] = existing
                    pending.remove(leg)

        def send(leg: Leg) -> Callable[[], Order]:
            return lambda: self._send_algo(symbol, close_side, qty, leg)

        sent = concurrently(*(send(leg) for leg in pending))
        for leg, outcome in zip(pending, sent, strict=True):
            if not isinstance(outcome, (Order, Exception)):
                raise outcome  # the process is going down (kill, crash)
            results[leg.kind] = outcome
        return results

    @staticmethod
    def booked(signal_id: str, symbol: str, side: str, qty: Decimal, legs: Iterable[Leg],
               placed: dict[str, Order | BaseException]) -> list[LegResult]:
        """The book's records of what :meth:`arm` did."""
        close_side = order_side(side, closing=True).upper()
        out: list[LegResult] = []
        for leg in legs:
            outcome = placed[leg.kind]
            rec = OrderRecord(leg.client_id, signal_id, symbol, leg.kind, close_side,
                              BRACKET_TYPES[leg.kind], qty, leg.trigger)
            out.append(LegResult(rec, outcome.order_id) if isinstance(outcome, Order)
                       else LegResult(rec, error=str(outcome)))
        return out

    def _send_algo(self, symbol: str, close_side: str, qty: Decimal, leg: Leg) -> Order:
        # both legs are the position's protection: never short-circuited by the breaker,
        # retried on their own budget (a take-profit lost to a 5xx would leave the position
        # half-bracketed until the next sweep)
        protective = True
        try:
            raw = self.gw.call_with(protective, self.gw.client.create_order, symbol,
                                BRACKET_TYPES[leg.kind], close_side, float(qty), None,
                                {"triggerPrice": float(leg.trigger), "reduceOnly": True,
                                 "clientOrderId": leg.client_id, "workingType": "MARK_PRICE"})
        except ccxt.ExchangeError as exc:
            found = self.find_order(symbol, leg.client_id, trigger=True,
                                    protective=protective) if is_duplicate_id(exc) else None
            if found is None or not found.is_open:
                raise
            return found
        return Order.from_ccxt(raw)

    def cancel_algo_orders(self, symbol: str, orders: list[Order] | None = None, *,
                           client_ids: Iterable[str] | None = None) -> int:
        """Cancel the symbol's open algo orders (``orders`` when the caller has them);
        with ``client_ids`` only those (one position's brackets, not the next one's)."""
        cancelled = 0
        wanted = set(client_ids) if client_ids is not None else None
        for order in self.gw.open_orders(symbol) if orders is None else orders:
            if wanted is not None and order.client_id not in wanted:
                continue
            with contextlib.suppress(ccxt.OrderNotFound):
                self.gw.call(self.gw.client.cancel_order, order.order_id, symbol,
                             {"trigger": True})
                cancelled += 1
            if order.client_id:
                self.store.update_order(order.client_id, status="canceled")
        return cancelled

    def flatten(self, symbol: str, side: str, qty: Decimal, cid: str, signal_id: str) -> Order:
        """Reduce-only market close of ``qty``; recorded before it is sent."""
        close_side = order_side(side, closing=True)
        self.store.record_pending(OrderRecord(cid, signal_id, symbol, "close",
                                              close_side.upper(), "MARKET", qty))
        fill = self.market(symbol, close_side, qty, cid, reduce_only=True, protective=True)
        self.store.update_order(cid, status="filled", exchange_id=fill.order.order_id,
                                avg_price=fill.order.avg_price)
        return fill.order

    # --- settlement ---
    def settle(self, symbol: str, side: str, since_ms: int,
               entry_order_id: str | None = None, until_order_id: str | None = None
               ) -> Settlement:
        """Exit price, realised PnL and fees of a closed position, from the exchange's fills.

        The position's fills start at its entry order's first trade (trade ids only grow),
        so a previous position's close in the same second is never counted; without a
        known entry (an adopted position) the time window alone delimits it. They end
        before ``until_order_id``'s first trade: the entry of the position that followed.
        Fees paid in another asset (BNB) are converted at its price, never taken as USDT.
        """
        trades = self.gw.call(self.gw.client.fetch_my_trades, symbol, since_ms, 1000)

        def first_trade(order_id: str | None) -> int | None:
            ids = [int(t["id"]) for t in trades
                   if order_id is not None and str(t.get("order")) == order_id]
            return min(ids) if ids else None

        start, end = first_trade(entry_order_id), first_trade(until_order_id)
        trades = [t for t in trades if (start is None or int(t["id"]) >= start)
                  and (end is None or int(t["id"]) < end)]
        closing_side = order_side(side, closing=True)
        closing = [t for t in trades if t["side"] == closing_side]
        realized = sum((to_decimal(t["info"].get("realizedPnl")) for t in trades), Decimal(0))
        fees, unconverted = self._fees(trades)
        qty = sum((to_decimal(t["amount"]) for t in closing), Decimal(0))
        exit_price = (sum((to_decimal(t["price"]) * to_decimal(t["amount"]) for t in closing),
                          Decimal(0)) / qty) if qty else None
        return Settlement(exit_price, realized - fees, fees, qty, unconverted)

    def _fees(self, trades: list[dict[str, Any]]
              ) -> tuple[Decimal, tuple[tuple[str, Decimal], ...]]:
        """USDT fees, other assets converted at their USDT price; what cannot be, apart."""
        by_asset: dict[str, Decimal] = {}
        for t in trades:
            fee = t.get("fee") or {}
            asset = str(fee.get("currency") or SETTLE_ASSET).upper()
            by_asset[asset] = by_asset.get(asset, Decimal(0)) + to_decimal(fee.get("cost"))
        total = by_asset.pop(SETTLE_ASSET, Decimal(0))
        unconverted: list[tuple[str, Decimal]] = []
        for asset, amount in sorted(by_asset.items()):
            try:
                price, _ = self.gw.last_price(f"{asset}{SETTLE_ASSET}")
            except (ExchangeUnavailable, ccxt.BaseError) as exc:
                log.warning("fee of %s %s not converted (%s): kept apart", amount, asset, exc)
                unconverted.append((asset, amount))
                continue
            total += amount * price
        return total, tuple(unconverted)

    def was_liquidated(self, symbol: str, since_ms: int) -> bool:
        try:
            rows = self.gw.call(self.gw.client.fapiPrivateGetForceOrders,
                                {"symbol": symbol, "startTime": since_ms})
        except ccxt.ExchangeError:
            return False
        return bool(rows)
