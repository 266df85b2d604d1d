"""Telemetry sink: every pipeline step goes to its Redis stream and its Kafka topic.

Telemetry never stops trading: a failing sink is logged, counted
(``phoenix95_telemetry_errors_total``) and reported by ``health()``, and the step that
emitted it carries on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import redis
from confluent_kafka import KafkaException, Producer
from prometheus_client import Counter

from shared.names import TELEMETRY_TOPIC_OF
from shared.records import Record
from shared.settings import Settings

log = logging.getLogger(__name__)

TELEMETRY_ERRORS = Counter(
    "phoenix95_telemetry_errors_total", "Telemetry records a sink failed to store", ["sink"]
)
TELEMETRY_RECORDS = Counter(
    "phoenix95_telemetry_records_total", "Telemetry records written", ["stream"]
)

Blocking = Callable[..., Any]


def _direct(fn: Blocking, *args: Any) -> Any:
    return fn(*args)


def kafka_producer_config(settings: Settings) -> dict[str, Any]:
    k = settings.kafka
    return {
        "bootstrap.servers": k.bootstrap_servers,
        "acks": k.acks,
        "retries": k.retries,
        "batch.size": k.batch_size,
        "linger.ms": k.linger_ms,
        "enable.idempotence": k.acks in ("all", "-1"),
        "message.timeout.ms": int(k.delivery_timeout_s * 1000),
        "client.id": "phoenix95",
    }


class TelemetryWriter:
    """Append records to Redis Streams (MAXLEN ~) and their Kafka topic.

    ``run_blocking`` runs librdkafka's blocking ``flush`` (``eventlet.tpool.execute``
    inside Nameko, so the hub keeps running); ``wait_for_kafka`` makes ``emit`` return
    only once the broker acknowledged the record (acks=all).
    """

    def __init__(
        self,
        settings: Settings,
        redis_client: redis.Redis,
        producer: Producer | None,
        *,
        run_blocking: Blocking = _direct,
        wait_for_kafka: bool = True,
    ) -> None:
        self._redis = redis_client
        self._producer = producer
        self._maxlen = settings.redis_streams.maxlen
        self._timeout = settings.kafka.delivery_timeout_s
        self._run_blocking = run_blocking
        self._wait = wait_for_kafka
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()

    def emit_nowait(self, stream: str, record: Record) -> None:
        """Like :meth:`emit`, without waiting for Kafka's acknowledgement.

        For request paths whose durable step is elsewhere (the webhook's is the confirmed
        AMQP publish): the Redis record is written at once, the Kafka delivery is reported
        by its callback on a later poll, a failure counted and logged like any other.
        """
        self._emit(stream, record, wait=False)

    def emit(self, stream: str, record: Record) -> None:
        self._emit(stream, record, wait=self._wait)

    def _emit(self, stream: str, record: Record, *, wait: bool) -> None:
        rec = record.stamped()
        try:
            self._redis.xadd(stream, dict(rec.stream_fields()),  # type: ignore[arg-type]
                             maxlen=self._maxlen, approximate=True)
            TELEMETRY_RECORDS.labels(stream).inc()
            self._clear("redis")
        except redis.RedisError as exc:
            self._fail("redis", exc)
        topic = TELEMETRY_TOPIC_OF.get(stream)
        if topic is not None and self._producer is not None:
            self._produce(topic, rec, wait)

    def _produce(self, topic: str, rec: Record, wait: bool) -> None:
        assert self._producer is not None
        failures: list[str] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))
                if not wait:  # reported late, from a later poll
                    self._fail("kafka", RuntimeError(str(err)))

        try:
            self._producer.produce(
                topic, value=rec.kafka_value(), key=rec.signal_id or rec.type,
                on_delivery=on_delivery,
            )
            if wait:
                remaining = self._run_blocking(self._producer.flush, self._timeout)
                if remaining:
                    failures.append(f"{remaining} record(s) not acknowledged in time")
            else:
                self._producer.poll(0)
        except (KafkaException, BufferError) as exc:
            failures.append(str(exc))
        if failures:
            self._fail("kafka", RuntimeError("; ".join(failures)))
        else:
            self._clear("kafka")

    def _fail(self, sink: str, exc: Exception) -> None:
        TELEMETRY_ERRORS.labels(sink).inc()
        with self._lock:
            first = sink not in self._errors
            self._errors[sink] = str(exc)
        if first:
            log.error("telemetry sink %s failing: %s", sink, exc)

    def _clear(self, sink: str) -> None:
        if sink in self._errors:
            with self._lock:
                self._errors.pop(sink, None)
            log.warning("telemetry sink %s recovered", sink)

    def health(self) -> dict[str, str]:
        with self._lock:
            return {sink: f"failing: {err}" for sink, err in self._errors.items()}

    def close(self) -> None:
        if self._producer is not None:
            self._run_blocking(self._producer.flush, self._timeout)
