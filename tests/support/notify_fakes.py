"""Stand-in for notify's Redis dedupe latch in unit tests (the real one, SentOnce, is
tested against Redis in tests/integration/test_notify_sent_once.py)."""

from __future__ import annotations


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
