"""Fakes at notify's boundaries for unit tests of the service."""

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
