"""What every notify entrypoint sends through: the verbosity filter, the durable
"already sent" latch and the outbox.

An alert that can reach notify more than once (a RabbitMQ redelivery, Alertmanager retrying
a webhook) carries a dedupe key; :class:`SentOnce` claims it in Redis with ``SET NX EX``,
so however many notify instances receive it, one queues it. If queuing then fails the
claim is released, so the retry that follows is not mistaken for a duplicate.
"""

from __future__ import annotations

import logging
from typing import Final, Protocol

import redis
from prometheus_client import Counter

from nameko_services.notify.engine import ALERTS_SUPPRESSED, AlertPolicy
from shared.names import NOTIFY_SENT_PREFIX

log = logging.getLogger(__name__)

ALERTS = Counter("phoenix95_alerts_total", "Alerts queued for delivery", ["level", "source"])
_LOG_LEVEL: Final = {"info": logging.INFO, "warning": logging.WARNING,
                     "critical": logging.CRITICAL}
DEDUPE_TTL_S: Final = 86400  # an id-keyed alert (a state change) is unique: a day is plenty


class Outbox(Protocol):
    def append(self, level: str, text: str, signal_id: str = "") -> str: ...

    def dead_letter_count(self) -> int: ...


class SentOnce:
    """A Redis latch per dedupe key, shared by every notify instance."""

    def __init__(self, client: redis.Redis, prefix: str = NOTIFY_SENT_PREFIX) -> None:
        self._client = client
        self._prefix = prefix

    def claim(self, key: str, ttl_s: int) -> bool:
        """True for the first claim of ``key`` within ``ttl_s`` seconds, on any instance."""
        return bool(self._client.set(self._prefix + key, "1", nx=True, ex=ttl_s))

    def release(self, key: str) -> None:
        self._client.delete(self._prefix + key)


class Latch(Protocol):
    def claim(self, key: str, ttl_s: int) -> bool: ...

    def release(self, key: str) -> None: ...


class Alerts:
    """Filter (verbosity, duplicates), log every alert and queue it in the durable outbox."""

    def __init__(self, outbox: Outbox, policy: AlertPolicy, once: Latch) -> None:
        self._outbox = outbox
        self.policy = policy
        self._once = once

    def send(self, level: str, text: str, source: str, signal_id: str = "",
             kind: str = "", dedupe_key: str = "", dedupe_ttl_s: int = DEDUPE_TTL_S
             ) -> str | None:
        """Queue one alert; None if the policy filtered it out or it was already sent."""
        if kind and not self.policy.wants(kind):
            return None
        if dedupe_key and not self._once.claim(dedupe_key, dedupe_ttl_s):
            ALERTS_SUPPRESSED.labels("duplicate").inc()
            return None
        ALERTS.labels(level, source).inc()
        log.log(_LOG_LEVEL.get(level, logging.INFO), "[alert:%s] %s", level, text)
        # without a Telegram token the log line above is the delivery; the outbox still
        # keeps the alert so the dashboard and a later-configured bot can see it
        try:
            return self._outbox.append(level, text, signal_id)
        except Exception:
            if dedupe_key:
                self._once.release(dedupe_key)  # the retry must not look like a duplicate
            raise

    def dead_letters(self) -> int | None:
        """Alerts Telegram refused for good (refreshes its gauge); None if Redis is down."""
        try:
            return self._outbox.dead_letter_count()
        except redis.RedisError:
            return None
