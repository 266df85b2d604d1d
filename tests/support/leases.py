"""A stand-in for shared.leader.LeaderLease in worker_factory unit tests."""

from __future__ import annotations

from typing import Any


class FakeLease:
    def __init__(self, leading: bool) -> None:
        self.leading = leading
        self.due_asked: list[float] = []

    def leads(self) -> bool:
        return self.leading

    def due(self, interval_s: float) -> bool:
        self.due_asked.append(interval_s)
        return self.leading

    def wire(self) -> dict[str, Any]:
        return {"leading": self.leading, "holder": "fake", "epoch": 1, "instance": "fake"}
