"""Fakes at notify's boundaries for unit tests of the service (the real dedupe latch,
SentOnce, is tested against Redis in tests/integration/test_notify_sent_once.py)."""

from __future__ import annotations


class FakeOutbox:
    """Stands in for :class:`nameko_services.notify.outbox.AlertOutbox` (Redis): records
    each alert as (level, text, signal id); ``fail=True`` is a Redis that does not answer."""

    def __init__(self, fail: bool = False) -> None:
        self.items: list[tuple[str, str, str]] = []
        self.fail = fail

    def append(self, level: str, text: str, signal_id: str = "") -> str:
        if self.fail:
            raise ConnectionError("redis down")
        self.items.append((level, text, signal_id))
        return f"{len(self.items)}-0"


class MemoryLatch:
    """SentOnce's contract in a dict; TTLs are recorded, not enforced."""

    def __init__(self) -> None:
        self.claimed: dict[str, int] = {}

    def claim(self, key: str, ttl_s: int) -> bool:
        if key in self.claimed:
            return False
        self.claimed[key] = ttl_s
        return True

    def release(self, key: str) -> None:
        self.claimed.pop(key, None)
