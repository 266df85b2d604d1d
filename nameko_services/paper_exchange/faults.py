"""Exchange faults on demand (``POST /paper/faults``), for the fault-injection suite.

While a fault is active each REST request (never ``/paper/*``, ``/health``, ``/metrics``
nor a WebSocket) fails with probability ``error_rate``, in one of the ``errors`` ways,
picked uniformly:

* ``"500"`` / ``"503"``: that HTTP status with a plain-text body, as Binance's front ends
  send (ccxt maps by status: ExchangeNotAvailable)
* ``"429"``: HTTP 429 ``{"code": -1003}`` as the weight limiter sends (ccxt: DDoSProtection)
* ``"-1001"``: HTTP 503 ``{"code": -1001, "msg": "Internal error; ..."}`` (Binance's
  "disconnected" code; ccxt: OperationFailed/NetworkError)
* ``"timeout"``: the request is NOT processed; the answer is held past the client's
  ``exchange.timeout_ms`` and the connection is then dropped (ccxt: RequestTimeout)
* ``"timeout-processed"`` (not in the issue's list, ask for it explicitly): the request IS
  processed (an order is placed) and then the answer is lost the same way: Binance's
  "execution status unknown", the case a client must settle by its client order id
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .models import ApiError

KINDS = ("500", "503", "timeout", "429", "-1001", "timeout-processed")
MAX_SECONDS = 3600.0
_EXEMPT_PREFIXES = ("/paper/",)
_EXEMPT_PATHS = frozenset({"/health", "/metrics", "/paper"})

_TEXT: dict[str, tuple[int, str]] = {
    "500": (500, "Internal Server Error"),
    "503": (503, "Service Unavailable"),
}
_BODIES: dict[str, tuple[int, dict[str, Any]]] = {
    "429": (429, {"code": -1003, "msg": "Too many requests; please use the websocket for "
                                        "live updates to avoid bans."}),
    "-1001": (503, {"code": -1001, "msg": "Internal error; unable to process your request. "
                                          "Please try your request again."}),
}


@dataclass(frozen=True)
class FaultSpec:
    error_rate: float
    errors: tuple[str, ...]
    seconds: float

    @classmethod
    def parse(cls, data: Any) -> FaultSpec:
        """The POST body, validated: ``{"error_rate", "errors", "seconds"}``."""
        if not isinstance(data, dict):
            raise ApiError(-1102, "Body must be JSON {error_rate, errors, seconds}.")
        try:
            rate = float(data["error_rate"])
            seconds = float(data["seconds"])
            errors = tuple(str(e) for e in data["errors"])
        except (KeyError, TypeError, ValueError):
            raise ApiError(-1102, "Body must be JSON {error_rate, errors, seconds}.") from None
        if not 0.0 <= rate <= 1.0:
            raise ApiError(-1130, "Data sent for parameter 'error_rate' is not valid.")
        if not 0.0 < seconds <= MAX_SECONDS:
            raise ApiError(-1130, "Data sent for parameter 'seconds' is not valid.")
        if not errors or any(e not in KINDS for e in errors):
            raise ApiError(-1130, f"Data sent for parameter 'errors' is not valid: "
                                  f"each one of {', '.join(KINDS)}.")
        return cls(rate, errors, seconds)


@dataclass(frozen=True)
class Fault:
    """What one request suffers: an error answer, or (timeout) a hold and a drop."""

    kind: str

    @property
    def is_timeout(self) -> bool:
        return self.kind in ("timeout", "timeout-processed")

    @property
    def processed(self) -> bool:
        return self.kind == "timeout-processed"

    def answer(self) -> tuple[int, dict[str, Any] | str]:
        """HTTP status and a JSON body (Binance's code) or a text body (a bare 5xx)."""
        return _TEXT[self.kind] if self.kind in _TEXT else _BODIES[self.kind]


class FaultInjector:
    """The active fault (one at a time; a new POST replaces it) and the draw per request."""

    def __init__(self, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rng = rng or random.Random()
        self._clock = clock
        self._lock = threading.Lock()
        self._spec: FaultSpec | None = None
        self._until = 0.0
        self.injected: dict[str, int] = dict.fromkeys(KINDS, 0)

    def set(self, spec: FaultSpec) -> dict[str, Any]:
        with self._lock:
            self._spec, self._until = spec, self._clock() + spec.seconds
            self.injected = dict.fromkeys(KINDS, 0)
        return self.view()

    def clear(self) -> dict[str, Any]:
        with self._lock:
            self._spec = None
        return self.view()

    def active(self) -> FaultSpec | None:
        with self._lock:
            if self._spec is not None and self._clock() >= self._until:
                self._spec = None
            return self._spec

    def view(self) -> dict[str, Any]:
        spec = self.active()
        with self._lock:
            injected = dict(self.injected)
            if spec is None:
                return {"active": False, "injected": injected}
            return {"active": True, "error_rate": spec.error_rate, "errors": list(spec.errors),
                    "remaining_s": round(max(0.0, self._until - self._clock()), 3),
                    "injected": injected}

    @staticmethod
    def exempt(path: str) -> bool:
        path = path.rstrip("/") or "/"
        return path in _EXEMPT_PATHS or path.startswith(_EXEMPT_PREFIXES)

    def draw(self, path: str) -> Fault | None:
        """The fault this request suffers, if any."""
        if self.exempt(path):
            return None
        spec = self.active()
        if spec is None:
            return None
        with self._lock:
            if self._rng.random() >= spec.error_rate:
                return None
            kind = self._rng.choice(spec.errors)
            self.injected[kind] += 1
        return Fault(kind)
