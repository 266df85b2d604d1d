"""The message bus at the broker boundary, for unit tests of the services."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.nameko_deps import BusError


@dataclass(frozen=True)
class Published:
    exchange: str
    routing_key: str
    message: Any  # as the service passed it (a typed message or a dict)
    body: dict[str, Any]  # what the broker would have carried
    headers: dict[str, Any] = field(default_factory=dict)


class FakeBus:
    """Stands in for :class:`shared.nameko_deps.MessageBus`: same ``publish`` signature,
    records every message in order; ``fail=True`` raises :class:`BusError` like a broker
    that does not confirm."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.sent: list[Published] = []

    def publish(self, exchange: str, routing_key: str, message: Any, *,
                declare: list[Any] | None = None,
                headers: dict[str, Any] | None = None) -> None:
        if self.fail:
            raise BusError("broker down")
        body = message.wire() if hasattr(message, "wire") else dict(message)
        self.sent.append(Published(exchange, routing_key, message, body, headers or {}))

    @property
    def published(self) -> list[tuple[str, str, Any]]:
        """(exchange, routing key, message as passed)."""
        return [(p.exchange, p.routing_key, p.message) for p in self.sent]

    @property
    def wired(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(exchange, routing key, the body on the wire)."""
        return [(p.exchange, p.routing_key, p.body) for p in self.sent]

    @property
    def messages(self) -> list[Any]:
        return [p.message for p in self.sent]
