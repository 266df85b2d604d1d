"""What keeps two execute workers (and two moments) apart: the symbol lease and the
symbol blocks, both in Redis so every instance sees them."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import redis
from redis.exceptions import LockError

from shared.names import EXECUTE_BLOCKS_KEY, SYMBOL_LOCK_PREFIX

log = logging.getLogger(__name__)


class LockBusy(RuntimeError):
    """Another execute instance holds the symbol; retry later."""


class Lease:
    """The holder's view of its lock: ``lost`` once it could not be extended."""

    def __init__(self) -> None:
        self.lost = False


class SymbolLock:
    """A per-symbol lease, extended every third of its TTL while the holder works.

    An open() may make a dozen requests with 10 s timeouts; a fixed TTL would lapse in
    the middle and let reconciliation act on the same symbol with the same client ids.
    The TTL only bounds how long a dead holder blocks the symbol, and with it how long a
    position whose entry filled just before a kill -9 waits for reconciliation to protect
    it: 10 s, the protection bar (chaos kill-execute saw 11.7 s with 30 s).
    """

    def __init__(self, client: redis.Redis, ttl_ms: int = 10_000, wait_s: float = 10.0) -> None:
        self.redis = client
        self._ttl = ttl_ms / 1000
        self._wait = wait_s

    @contextlib.contextmanager
    def hold(self, symbol: str) -> Iterator[Lease]:
        # thread_local=False: the keeper thread extends with the holder's token
        lock = self.redis.lock(SYMBOL_LOCK_PREFIX + symbol, timeout=self._ttl,
                               blocking_timeout=self._wait, thread_local=False)
        if not lock.acquire():
            raise LockBusy(f"{symbol} is locked by another execute worker")
        lease, done = Lease(), threading.Event()

        def keep() -> None:
            while not done.wait(self._ttl / 3):
                try:
                    lock.reacquire()
                except LockError:
                    lease.lost = True
                    log.critical("lease on %s lost while working", symbol)
                    return
                except redis.RedisError as exc:  # try again next period, before it lapses
                    log.warning("lease on %s not extended: %s", symbol, exc)

        keeper = threading.Thread(target=keep, name=f"lease-{symbol}", daemon=True)
        keeper.start()
        try:
            yield lease
        finally:
            done.set()
            with contextlib.suppress(redis.RedisError, LockError):
                lock.release()


class Blocks:
    """Symbols a failed pre-flight blocked, with the reason; shared by every instance."""

    def __init__(self, client: redis.Redis, key: str = EXECUTE_BLOCKS_KEY) -> None:
        self._redis = client
        self._key = key

    def reason(self, symbol: str) -> str | None:
        raw = self._redis.hget(self._key, symbol)
        if raw is None:
            return None
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def block(self, symbol: str, reason: str) -> None:
        self._redis.hset(self._key, symbol, reason)

    def lift(self, symbol: str) -> bool:
        return bool(self._redis.hdel(self._key, symbol))
