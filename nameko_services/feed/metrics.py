"""The feed's Prometheus metrics, on a registry of its own (one per Feed: tests run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class FeedMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("phoenix95_feed_events_total",
                              "Exchange events stored, by stream", ["stream"], registry=r)
        self.bad_events = Counter("phoenix95_feed_bad_events_total",
                                  "Exchange messages that could not be parsed", ["stream"],
                                  registry=r)
        self.reconnects = Counter("phoenix95_feed_reconnects_total",
                                  "WebSocket reconnects (and listenKey re-creations)",
                                  ["stream"], registry=r)
        self.state_age = Gauge("phoenix95_feed_state_age_seconds",
                               "Age of the market (last mark) and account (last sync/beat) state",
                               ["kind"], registry=r)
        self.rest = Counter("phoenix95_feed_rest_requests_total",
                            "REST requests the feed made, by call", ["call"], registry=r)
        self.latency = Histogram(
            "phoenix95_feed_event_latency_seconds",
            "Exchange event time to stored in Redis", ["stream"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
        self.sink_drops = Counter("phoenix95_feed_sink_drops_total",
                                  "Records not written, by sink", ["sink"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
