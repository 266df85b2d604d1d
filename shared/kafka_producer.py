"""A Kafka producer that is replaced when it can no longer deliver (chaos finding 4).

An idempotent librdkafka producer can die while the broker is fine again:

* **fatal**: librdkafka declares the producer FATAL (``error_cb`` with ``err.fatal()``, a
  ``_FATAL`` delivery report, or ``produce`` raising it), e.g. ``UNKNOWN_PRODUCER_ID``
  with messages in flight ("unable to retry without risking duplication/reordering");
  every later record fails at once;
* **stuck**: a broker that restarted empty (Tansu on memory storage) answers
  ``UNKNOWN_PRODUCER_ID`` to every request; librdkafka bumps the epoch and retries until
  ``message.timeout.ms``, forever, and no record is delivered again.

Either way only a new producer (a new producer id) delivers again. The replacement is
made by whoever calls :meth:`poll`: the telemetry writer's background delivery loop, or
the feed's batch flush, never the caller of :meth:`produce` (trading never waits for it).
Records still held by the old producer are purged and reported failed through their
``on_delivery`` (the writer counts them as dropped). During a real outage a new producer
is made at most once per ``stuck_after_s``: harmless, it connects like the old one would.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from prometheus_client import Counter

from shared.settings import Settings

log = logging.getLogger(__name__)

PRODUCER_RECREATED = Counter(
    "phoenix95_kafka_producer_recreated_total",
    "Kafka producers replaced because they could no longer deliver", ["client", "reason"],
)

ErrorCallback = Callable[[KafkaError], None]
Delivery = Callable[[Any, Any], None]


class RecoveringProducer:
    """``produce``/``poll``/``flush``/``purge``/``len`` of a :class:`confluent_kafka.Producer`,
    over a producer that is replaced when it is fatal or stuck (module docstring)."""

    def __init__(self, config: Mapping[str, Any], *, stuck_after_s: float,
                 factory: Callable[[dict[str, Any]], Any] = Producer,
                 clock: Callable[[], float] = time.monotonic) -> None:
        conf = dict(config)
        self._user_error_cb: ErrorCallback | None = conf.pop("error_cb", None)
        self._config = conf
        self._factory = factory
        self._clock = clock
        self._stuck_after = stuck_after_s
        self._client = str(conf.get("client.id", "phoenix95"))
        self._lock = threading.Lock()  # one replacement at a time
        self._fatal = ""  # why the current producer is fatal, "" while it is not
        self._last_ok = clock()
        self._failed_since_ok = 0
        self._made_at = clock()
        self.recreated = 0
        self._replaced_in_outage = 0  # replacements since the last delivery (log once)
        self._producer = self._make()

    def _make(self) -> Any:
        return self._factory({**self._config, "error_cb": self._on_error})

    # ------------------------------------------------------------------ the producer API

    def produce(self, topic: str, value: bytes, key: str | None = None,
                on_delivery: Delivery | None = None) -> None:
        generation = self.recreated

        def delivered(err: Any, msg: Any) -> None:
            if generation == self.recreated:  # a replaced producer's purge says nothing
                self._account(err)
            if on_delivery is not None:
                on_delivery(err, msg)

        try:
            self._producer.produce(topic, value=value, key=key, on_delivery=delivered)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.fatal():
                self._fatal = self._fatal or str(err)
            raise

    def poll(self, timeout: float = 0.0) -> int:
        served = int(self._producer.poll(timeout))
        self.recover()
        return served

    def flush(self, timeout: float = 0.0) -> int:
        return int(self._producer.flush(timeout))

    def purge(self, *args: Any, **kwargs: Any) -> None:
        self._producer.purge(*args, **kwargs)

    def __len__(self) -> int:
        return len(self._producer)

    # ------------------------------------------------------------------ detection

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = self._fatal or str(err)
        if self._user_error_cb is not None:
            self._user_error_cb(err)

    def _account(self, err: Any) -> None:
        if err is None:
            self._last_ok = self._clock()
            self._failed_since_ok = 0
            self._replaced_in_outage = 0
            return
        self._failed_since_ok += 1
        if isinstance(err, KafkaError) and (err.fatal() or err.code() == KafkaError._FATAL):
            self._fatal = self._fatal or str(err)

    def _why_replace(self) -> str:
        if self._fatal:
            return "fatal"
        now = self._clock()
        if (self._failed_since_ok and now - self._last_ok >= self._stuck_after
                and now - self._made_at >= self._stuck_after):
            return "stuck"
        return ""

    def recover(self) -> bool:
        """Replace the producer if it is fatal or stuck; return whether it was replaced."""
        reason = self._why_replace()
        if not reason:
            return False
        with self._lock:
            reason = self._why_replace()  # another thread may have replaced it meanwhile
            if not reason:
                return False
            old, detail = self._producer, self._fatal
            self._producer = self._make()
            self._fatal = ""
            self._made_at = self._clock()
            self._failed_since_ok = 0
            self.recreated += 1
        PRODUCER_RECREATED.labels(self._client, reason).inc()
        self._replaced_in_outage += 1
        # a broker that stays down makes this happen every stuck_after_s: say it once
        log.log(logging.WARNING if self._replaced_in_outage == 1 else logging.DEBUG,
                "kafka producer %s %s (%s): replaced by a new one", self._client, reason,
                detail or f"no delivery for {self._clock() - self._last_ok:.0f}s")
        try:  # its records are failed now (their reports counted), not left in limbo
            old.purge()
            old.poll(0)
        except Exception:  # noqa: BLE001 - a dead producer may refuse even this
            log.debug("purging the replaced producer failed", exc_info=True)
        return True


def recovering_producer(settings: Settings, **overrides: Any) -> RecoveringProducer:
    """The project's producer configuration (:func:`kafka_producer_config`), replaced when
    no delivery succeeded for two delivery timeouts while records kept failing."""
    from shared.telemetry import kafka_producer_config

    return RecoveringProducer({**kafka_producer_config(settings), **overrides},
                              stuck_after_s=2 * settings.kafka.delivery_timeout_s)
