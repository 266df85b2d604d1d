"""Exchange gateway: the one way services talk to Binance (or the paper exchange).

Wraps the ccxt client with a circuit breaker (``high_availability`` settings: 5 failures,
60 s), small caches for reference data, and Decimal conversion at the edge. Business
errors from the exchange (``ccxt.ExchangeError``: bad order, insufficient margin) do
not trip the breaker; network errors and exchange outages do.

Protective requests (an emergency close, a stop-loss and the reads that re-arm one) go
past the breaker: the failures that opened it are the reason they are needed. They have
their own retry budget instead (:meth:`ExchangeGateway.call_protective`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import ccxt
import pybreaker
import tenacity
from prometheus_client import Gauge

from shared.exchange import make_exchange
from shared.money import DEFAULT_BRACKETS, Bracket, parse_brackets
from shared.settings import Settings
from shared.state import Order, Position

T = TypeVar("T")

BREAKER_STATE = Gauge(
    "phoenix95_circuit_breaker_open", "1 when the exchange circuit breaker is open", ["name"]
)


# a protective request: 5 attempts, 0.2 s .. 2 s apart (about 4 s in all)
PROTECTIVE_ATTEMPTS = 5
PROTECTIVE_WAIT_S = (0.2, 2.0)


# Not an answer about the request: network errors, 5xx, and Binance's -1001 "internal error,
# try again" (ccxt's OperationFailed, the parent of NetworkError). Raw, -1001 escaped every
# `except ExchangeUnavailable` (risk's check dead-lettered the signal in chaos exchange-faults).
UNAVAILABLE = (ccxt.OperationFailed, ccxt.ExchangeNotAvailable)


class ExchangeUnavailable(RuntimeError):
    """The exchange could not be reached (network, outage, or circuit open)."""


class BracketsUnavailable(ExchangeUnavailable):
    """No leverage tiers for a symbol: the exchange did not give them and the built-in
    table does not have the symbol. Nothing may be traded on it."""


class _BreakerGauge(pybreaker.CircuitBreakerListener):
    def state_change(self, cb: pybreaker.CircuitBreaker, old: Any, new: Any) -> None:
        BREAKER_STATE.labels(cb.name).set(1 if new.name == "open" else 0)


def _is_business_error(exc: BaseException) -> bool:
    """Exchange answered and refused: the exchange is healthy, don't trip the breaker."""
    return isinstance(exc, ccxt.ExchangeError) and not isinstance(exc, ccxt.ExchangeNotAvailable)


def _reraise(exc: Exception) -> None:
    raise exc


def _succeed() -> None:
    return None


def to_decimal(value: Any) -> Decimal:
    return Decimal(str(value)) if value is not None else Decimal(0)


class ExchangeGateway:
    def __init__(self, settings: Settings, client: ccxt.binanceusdm | None = None,
                 *, name: str = "exchange") -> None:
        self.settings = settings
        self.client = client or make_exchange(settings)
        ha = settings.high_availability
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=ha.circuit_breaker_failures,
            reset_timeout=ha.circuit_breaker_recovery,
            exclude=[_is_business_error],
            listeners=[_BreakerGauge()],
            name=name,
        )
        self._cache: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()
        self._markets_loaded = False

    # --- plumbing ---
    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` guarded by the breaker; requests of concurrent callers run concurrently.

        pybreaker holds its lock for the whole guarded call, which would queue every
        request of the process behind the one in flight. While the circuit is closed the
        request runs outside it and only its outcome is booked with the breaker; open or
        half-open, pybreaker's own path fails fast or lets one trial request through.
        """
        if self.breaker.current_state != pybreaker.STATE_CLOSED:
            return self._guarded(fn, *args, **kwargs)
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            with contextlib.suppress(Exception):  # counts the failure (may open the circuit)
                self.breaker.call(_reraise, exc)
            if isinstance(exc, UNAVAILABLE):
                raise ExchangeUnavailable(str(exc)) from exc
            raise
        with contextlib.suppress(Exception):  # a success resets the failure count
            self.breaker.call(_succeed)
        return result

    def call_protective(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` never short-circuited by the breaker; network failures (timeouts, 5xx,
        429, -1001) retried on a budget of its own. Safe for orders: every order we send has a
        deterministic client id, so a retry of one that got through is answered -4116."""
        low, high = PROTECTIVE_WAIT_S
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(PROTECTIVE_ATTEMPTS),
            wait=tenacity.wait_exponential(multiplier=low, min=low, max=high),
            # OperationFailed: network errors and Binance's -1001 "internal error, try again"
            retry=tenacity.retry_if_exception_type(ccxt.OperationFailed),
            reraise=True)
        try:
            return retrying(fn, *args, **kwargs)
        except ccxt.NetworkError as exc:
            raise ExchangeUnavailable(f"protective request failed {PROTECTIVE_ATTEMPTS} "
                                      f"times: {exc}") from exc

    def call_with(self, protective: bool, fn: Callable[..., T], *args: Any,
                  **kwargs: Any) -> T:
        """:meth:`call_protective` when ``protective``, else :meth:`call`."""
        return self.call_protective(fn, *args, **kwargs) if protective else \
            self.call(fn, *args, **kwargs)

    def _guarded(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return self.breaker.call(fn, *args, **kwargs)
        except pybreaker.CircuitBreakerError as exc:
            raise ExchangeUnavailable(f"circuit open: {exc}") from exc
        except UNAVAILABLE as exc:
            raise ExchangeUnavailable(str(exc)) from exc

    def _cached(self, key: str, ttl: float, load: Callable[[], T]) -> T:
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < ttl:
            return hit[1]
        value = load()
        with self._lock:
            self._cache[key] = (now, value)
        return value

    def invalidate(self, prefix: str = "") -> None:
        with self._lock:
            for key in [k for k in self._cache if k.startswith(prefix)]:
                del self._cache[key]

    def ensure_markets(self) -> None:
        if not self._markets_loaded:
            self.call(self.client.load_markets)
            self._markets_loaded = True

    def market(self, symbol: str) -> dict[str, Any]:
        self.ensure_markets()
        return self.client.market(symbol)

    # --- reference data ---
    def tick_size(self, symbol: str) -> Decimal:
        return to_decimal(self.market(symbol)["precision"]["price"])

    def step_size(self, symbol: str) -> Decimal:
        return to_decimal(self.market(symbol)["precision"]["amount"])

    def min_quantity(self, symbol: str) -> Decimal:
        return to_decimal(self.market(symbol)["limits"]["amount"]["min"])

    def min_notional(self, symbol: str) -> Decimal:
        return to_decimal(self.market(symbol)["limits"]["cost"]["min"])

    def amount_to_precision(self, symbol: str, quantity: Decimal) -> Decimal:
        self.ensure_markets()
        return Decimal(self.client.amount_to_precision(symbol, float(quantity)))

    def brackets(self, symbol: str) -> tuple[Bracket, ...]:
        """Leverage brackets from the exchange (cached 1 h); built-in table as fallback;
        :class:`BracketsUnavailable` when neither has the symbol."""

        def load() -> tuple[Bracket, ...]:
            try:
                raw = self.call(self.client.fapiPrivateGetLeverageBracket, {"symbol": symbol})
            except (ExchangeUnavailable, ccxt.ExchangeError) as exc:
                fallback = DEFAULT_BRACKETS.get(symbol)
                if fallback is None:
                    raise BracketsUnavailable(
                        f"{symbol}: no leverage brackets (exchange: {exc}; not in the "
                        f"built-in table)") from exc
                return fallback
            return parse_brackets(raw)

        return self._cached(f"brackets:{symbol}", 3600.0, load)

    # --- market data ---
    def last_price(self, symbol: str) -> tuple[Decimal, int]:
        """(last price, exchange timestamp in ms)."""
        ticker = self.call(self.client.fetch_ticker, symbol)
        return to_decimal(ticker["last"]), int(ticker.get("timestamp") or 0)

    def ohlcv(self, symbol: str, timeframe: str, limit: int, ttl: float) -> list[list[float]]:
        return self._cached(
            f"ohlcv:{symbol}:{timeframe}:{limit}", ttl,
            lambda: self.call(self.client.fetch_ohlcv, symbol, timeframe, None, limit),
        )

    # --- account ---
    def equity(self, ttl: float = 2.0) -> tuple[Decimal, Decimal]:
        """(total margin balance, available balance) in USDT."""

        def load() -> tuple[Decimal, Decimal]:
            bal = self.call(self.client.fetch_balance)
            usdt = bal.get("USDT", {})
            return to_decimal(usdt.get("total")), to_decimal(usdt.get("free"))

        return self._cached("equity", ttl, load)

    # --- typed account reads (shared.state models: the one parse of ccxt's structures) ---
    def open_positions(self, *, protective: bool = False) -> list[Position]:
        """Every open position (one ``GET /fapi/v3/positionRisk``)."""
        self.ensure_markets()
        rows = self.call_with(protective, self.client.fetch_positions)
        return [p for p in (Position.from_ccxt(r) for r in rows) if p is not None]

    def open_orders(self, symbol: str | None = None, *, algo: bool = True,
                    protective: bool = False) -> list[Order]:
        """Open orders of ``symbol`` (all symbols when None); ``algo``: conditional ones."""
        self.ensure_markets()
        params = {"trigger": True} if algo else {}
        rows = self.call_with(protective, self.client.fetch_open_orders, symbol, None, None,
                          params)
        return [Order.from_ccxt(r) for r in rows]

    def order(self, symbol: str, client_id: str, *, algo: bool,
              protective: bool = False) -> Order | None:
        """An order looked up by its client id; None when the exchange does not know it."""
        params: dict[str, Any] = {"clientOrderId": client_id}
        if algo:
            params["trigger"] = True
        try:
            return Order.from_ccxt(self.call_with(protective, self.client.fetch_order, None,
                                              symbol, params))
        except ccxt.OrderNotFound:
            return None
