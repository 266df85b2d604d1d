"""Prometheus metrics of the paper exchange (its own registry): what a trade costs in calls.

``paper_exchange_requests_total{method,path}`` counts HTTP requests by route (never the
query, and unknown paths as ``other``, so the label set stays small), WebSocket handshakes
included; ``paper_exchange_ws_connections{route}`` is the open sockets;
``paper_exchange_ws_events_total{type}`` the WebSocket messages sent, by event type
(``e``; ``response`` for SUBSCRIBE/... answers).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("paper_exchange_requests", "HTTP requests by route",
                                ["method", "path"], registry=self.registry)
        self.ws_connections = Gauge("paper_exchange_ws_connections",
                                    "Open WebSocket connections", ["route"],
                                    registry=self.registry)
        self.ws_events = Counter("paper_exchange_ws_events", "WebSocket messages sent",
                                 ["type"], registry=self.registry)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


@dataclass
class Latency:
    """A simulated network delay: ``ms`` + uniform(0, ``jitter_ms``); 0/0 = none."""

    ms: int = 0
    jitter_ms: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def delay_s(self) -> float:
        if not self.ms and not self.jitter_ms:
            return 0.0
        return (self.ms + self.rng.uniform(0, self.jitter_ms)) / 1000.0
