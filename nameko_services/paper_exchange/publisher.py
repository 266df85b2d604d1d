"""Publishes simulated market records to the Redis market stream; never fatal.

The exchange must keep serving orders when Redis is down (tests and local runs often have
no Redis), so every failure is swallowed and reported at most once a minute.
"""

from __future__ import annotations

import logging
import time

import redis

from shared.records import Record

log = logging.getLogger(__name__)
WARN_EVERY_S = 60.0


class StreamPublisher:
    def __init__(self, url: str, stream: str, maxlen: int) -> None:
        self.stream = stream
        self.maxlen = maxlen
        # Short timeouts: a hung Redis must not stall the ticker (and thus the triggers).
        self.client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._last_warning = 0.0
        self.failures = 0

    def publish(self, records: list[Record]) -> bool:
        """XADD all records in one round trip; False (and maybe a warning) on failure."""
        if not records:
            return True
        try:
            pipe = self.client.pipeline(transaction=False)
            for record in records:
                pipe.xadd(self.stream, record.stream_fields(),  # type: ignore[arg-type]
                          maxlen=self.maxlen, approximate=True)
            pipe.execute()
            return True
        except (redis.RedisError, OSError) as exc:
            self.failures += 1
            now = time.monotonic()
            if now - self._last_warning >= WARN_EVERY_S:
                self._last_warning = now
                log.warning("market stream publish failed (%s); still serving, will retry: %s",
                            self.stream, exc)
            return False

    def close(self) -> None:
        try:
            self.client.close()
        except (redis.RedisError, OSError):
            pass
