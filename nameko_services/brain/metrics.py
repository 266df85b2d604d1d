"""Brain's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from shared.web import HttpError

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

WEBHOOKS = Counter(
    "phoenix95_webhooks_total", "Webhook requests by outcome and reason", ["outcome", "reason"]
)
SIGNALS_REJECTED = Counter(
    "phoenix95_signals_rejected_total", "Signals rejected after intake, by reason", ["reason"]
)
INTAKE_SECONDS = Histogram(
    "phoenix95_webhook_latency_seconds", "Webhook receipt to 202 (queued durably)",
    buckets=LATENCY_BUCKETS,
)
ANALYSIS_SECONDS = Histogram(
    "phoenix95_analysis_seconds", "Phoenix 95 analysis and sizing time", buckets=LATENCY_BUCKETS
)

_REASONS = {400: "malformed", 401: "unauthorized", 403: "forbidden_source", 413: "too_large",
            422: "invalid", 429: "rate_limited", 503: "unavailable"}


def reason_of(exc: HttpError) -> str:
    """The stable reason code of an intake rejection (``stale``, ``unauthorized``, ...)."""
    explicit = exc.extra.get("reason")
    if isinstance(explicit, str) and explicit:
        return explicit
    field = exc.extra.get("field")
    base = _REASONS.get(exc.status, str(exc.status))
    return f"{base}_{field}" if field else base
