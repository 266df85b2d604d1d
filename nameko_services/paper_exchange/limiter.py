"""Binance-style request-weight limit (``paper_exchange.max_requests_per_minute``).

Binance counts a *weight* per request against ``REQUEST_WEIGHT`` per clock minute (a fixed
window that resets at the start of each minute, reported in ``X-MBX-USED-WEIGHT-1M``).
Past the limit it answers HTTP 429 ``{"code": -1003, ...}`` with ``Retry-After`` seconds;
ccxt raises ``DDoSProtection`` (``RateLimitExceeded`` by the -1003 code). Rejected requests
still count, as on Binance, so a client that does not back off stays limited until the
window turns. Not simulated: the separate order-count limits and the HTTP 418 IP ban.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from .book import now_ms
from .models import ApiError

WINDOW_MS = 60_000
# Weights from Binance's USD-M docs for the calls ccxt makes; everything else weighs 1.
_WEIGHTS = {
    "/fapi/v2/account": 5, "/fapi/v3/account": 5, "/fapi/v2/balance": 5,
    "/fapi/v3/balance": 5, "/fapi/v2/positionRisk": 5, "/fapi/v3/positionRisk": 5,
    "/fapi/v1/userTrades": 5, "/fapi/v1/symbolConfig": 5, "/fapi/v1/forceOrders": 20,
}
_WITHOUT_SYMBOL = {"/fapi/v1/ticker/24hr": 40, "/fapi/v1/openOrders": 40,
                   "/fapi/v1/openAlgoOrders": 40, "/fapi/v1/forceOrders": 50}


def request_weight(path: str, params: dict[str, str]) -> int:
    if path in _WITHOUT_SYMBOL and not params.get("symbol"):
        return _WITHOUT_SYMBOL[path]
    if path == "/fapi/v1/klines":
        try:
            limit = int(params.get("limit") or 500)
        except ValueError:
            limit = 500
        return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10
    return _WEIGHTS.get(path, 1)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    used: int
    retry_after_s: int


class WeightLimiter:
    def __init__(self, limit: int, clock: Callable[[], int] = now_ms) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive (0 means: no limiter at all)")
        self.limit = limit
        self.clock = clock
        self._lock = threading.Lock()
        self._window = -1
        self._used = 0

    def charge(self, weight: int) -> Verdict:
        now = self.clock()
        window = now - now % WINDOW_MS
        with self._lock:
            if window != self._window:
                self._window, self._used = window, 0
            self._used += weight
            used = self._used
        retry = max(1, -(-(window + WINDOW_MS - now) // 1000))  # ceil to whole seconds
        return Verdict(used <= self.limit, used, retry)

    def rejection(self) -> ApiError:
        return ApiError(-1003, f"Too many requests; current limit of IP(127.0.0.1) is "
                               f"{self.limit} requests per minute. Please use the websocket "
                               f"for live updates to avoid polling the API.", 429)
