"""Appending records: Redis streams (XADD MAXLEN ~, pipelined) and Kafka (never blocking).

Records are buffered by the event handlers and written once per batch of events. A Kafka
outage must never stall the feed: produce is fire-and-forget with librdkafka's bounded
queue, a full queue or a failed delivery drops the record (counted, logged once per outage);
the Redis record is the one consumers read.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import redis

from shared.records import Record

from .metrics import FeedMetrics

log = logging.getLogger("phoenix95.feed.sink")


class KafkaProducer(Protocol):
    def produce(self, topic: str, value: bytes, key: str, on_delivery: Any = ...) -> None: ...

    def poll(self, timeout: float) -> int: ...

    def flush(self, timeout: float) -> int: ...


class RecordSink:
    def __init__(self, redis_client: redis.Redis, maxlen: int, metrics: FeedMetrics,
                 producer: KafkaProducer | None = None, topic: str = "") -> None:
        self.redis = redis_client
        self.maxlen = maxlen
        self.metrics = metrics
        self.producer = producer
        self.topic = topic
        self._pending: list[tuple[str, Record, str | None]] = []
        self._failing: set[str] = set()

    def add(self, stream: str, record: Record, kafka_key: str | None = None) -> None:
        """Buffer one record; ``kafka_key`` also sends it to the Kafka topic."""
        self._pending.append((stream, record.stamped(), kafka_key))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for stream, rec, _ in batch:
                pipe.xadd(stream, rec.stream_fields(),  # type: ignore[arg-type]
                          maxlen=self.maxlen, approximate=True)
            pipe.execute()
            self._ok("redis")
        except redis.RedisError as exc:
            self._fail("redis", exc, len(batch))
        if self.producer is not None:
            for _, rec, key in batch:
                if key is not None:
                    self._produce(rec, key)
            self.producer.poll(0)

    def _produce(self, rec: Record, key: str) -> None:
        assert self.producer is not None

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                self._fail("kafka", RuntimeError(str(err)), 1)
            else:
                self._ok("kafka")

        try:
            self.producer.produce(self.topic, value=rec.kafka_value(), key=key,
                                  on_delivery=delivered)
        except (BufferError, Exception) as exc:  # noqa: BLE001 - an outage never stops the feed
            self._fail("kafka", exc, 1)

    def close(self, timeout: float = 2.0) -> int:
        """Blocking: deliver what librdkafka still holds (run it in an executor)."""
        return self.producer.flush(timeout) if self.producer is not None else 0

    def _fail(self, sink: str, exc: Exception, count: int) -> None:
        self.metrics.sink_drops.labels(sink).inc(count)
        if sink not in self._failing:
            self._failing.add(sink)
            log.error("record sink %s failing (records dropped, counted): %s", sink, exc)

    def _ok(self, sink: str) -> None:
        if sink in self._failing:
            self._failing.discard(sink)
            log.info("record sink %s recovered", sink)
