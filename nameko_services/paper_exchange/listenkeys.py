"""User-data stream keys (``/fapi/v1/listenKey``) with Binance's lifetime rules.

One account, so at most one active key: a POST returns the active key (and extends it) or
makes a new one; a PUT extends the active key; a key not POSTed or PUT for ``ttl_s`` expires.
Thread-safe: REST workers create and extend keys, the WebSocket loop collects expiries.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable

from .models import ApiError

UNKNOWN_KEY = ApiError(-1125, "This listenKey does not exist.")


class ListenKeys:
    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._lock = threading.Lock()
        self._active: str | None = None
        self._expires_at = 0.0
        self._expired: list[str] = []  # expired but not yet announced on the sockets

    def _sweep(self) -> None:
        if self._active is not None and self.clock() >= self._expires_at:
            self._expired.append(self._active)
            self._active = None

    def create(self) -> str:
        with self._lock:
            self._sweep()
            if self._active is None:
                self._active = secrets.token_urlsafe(48).replace("-", "x").replace("_", "y")
            self._expires_at = self.clock() + self.ttl_s
            return self._active

    def keepalive(self, key: str | None) -> str:
        """Extend the active key (``key`` None: whichever is active); -1125 if none."""
        with self._lock:
            self._sweep()
            if self._active is None or (key is not None and key != self._active):
                raise UNKNOWN_KEY
            self._expires_at = self.clock() + self.ttl_s
            return self._active

    def close(self, key: str | None) -> None:
        with self._lock:
            self._sweep()
            if self._active is None or (key is not None and key != self._active):
                raise UNKNOWN_KEY
            self._active = None  # closed, not expired: no listenKeyExpired event

    def is_active(self, key: str) -> bool:
        with self._lock:
            self._sweep()
            return key == self._active

    def expire_all(self) -> list[str]:
        """Expire every key now (test hook); they are announced by :meth:`take_expired`."""
        with self._lock:
            self._expires_at = self.clock()
            self._sweep()
            return list(self._expired)

    def take_expired(self) -> list[str]:
        """Keys that expired since the last call (each is announced exactly once)."""
        with self._lock:
            self._sweep()
            expired, self._expired = self._expired, []
            return expired
