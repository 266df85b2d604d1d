"""Consumer lag on every RabbitMQ queue, Redis stream group and Kafka topic.

Read-only probes shared by notify's ``/metrics`` (``phoenix95_consumer_lag_messages``)
and the dashboard. Each probe returns :class:`Lag` rows and never raises: a broker that
cannot be asked gives an ``error`` row instead, so one slow or missing broker never
hides the others.

* RabbitMQ: ``queue_declare(passive=True)`` (messages ready, consumers) through kombu;
* Redis: ``XINFO GROUPS`` (``lag`` = entries not yet delivered to the group, Redis >= 7;
  ``pending`` = delivered, not yet acknowledged);
* Kafka: the group's committed offsets against the high watermarks (a group that never
  committed lags by everything retained).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared import names

log = logging.getLogger(__name__)

# which service consumes each work queue (the "group" label of a queue)
QUEUE_CONSUMERS: dict[str, str] = {
    names.SIGNAL_QUEUE: names.BRAIN,
    names.TRADE_QUEUE: names.EXECUTE,
    names.RISK_ALERT_QUEUE: names.NOTIFY,
}


@dataclass(frozen=True)
class Lag:
    """Messages waiting for one consumer group on one source."""

    broker: str  # rabbitmq | redis | kafka
    source: str  # queue, stream or topic
    group: str  # consuming service, consumer group
    messages: int | None  # None when unknown
    pending: int | None = None  # delivered, not yet acknowledged (Redis)
    consumers: int | None = None
    error: str | None = None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def rabbitmq_lag(amqp_uri: str, queues: Mapping[str, str] | None = None,
                 timeout: float = 3.0) -> list[Lag]:
    """Ready messages of every work queue and its dead-letter queue."""
    from kombu import Connection

    queues = dict(QUEUE_CONSUMERS if queues is None else queues)
    targets = [(q, g) for q, g in queues.items()]
    targets += [(q + names.DLQ_SUFFIX, "dead_letter") for q in queues]
    rows: list[Lag] = []
    try:
        with Connection(amqp_uri, connect_timeout=timeout, transport_options={
                "max_retries": 0}) as conn:
            conn.ensure_connection(max_retries=1)
            for queue, group in targets:
                channel = conn.channel()
                try:
                    ok = channel.queue_declare(queue=queue, passive=True)
                    rows.append(Lag("rabbitmq", queue, group, int(ok.message_count),
                                    consumers=int(ok.consumer_count)))
                except Exception as exc:  # noqa: BLE001 - a missing queue is a row
                    rows.append(Lag("rabbitmq", queue, group, None, error=_describe(exc)))
                finally:
                    try:
                        channel.close()
                    except Exception:  # noqa: BLE001 - channel already closed by the error
                        pass
    except Exception as exc:  # noqa: BLE001 - broker down: one row per queue says so
        rows = [Lag("rabbitmq", q, g, None, error=_describe(exc)) for q, g in targets]
    return rows


def redis_lag(client: Any, stream_groups: Mapping[str, Sequence[str]] | None = None
              ) -> list[Lag]:
    """``XINFO GROUPS`` of every stream; groups not yet created are reported as errors."""
    stream_groups = names.STREAM_GROUPS if stream_groups is None else stream_groups
    rows: list[Lag] = []
    for stream, expected in stream_groups.items():
        try:
            infos = client.xinfo_groups(stream)
        except Exception as exc:  # noqa: BLE001 - missing stream or Redis down
            rows += [Lag("redis", stream, g, None, error=_describe(exc)) for g in expected]
            continue
        seen: set[str] = set()
        for info in infos:
            data = {_text(k): v for k, v in info.items()}
            group = _text(data.get("name", ""))
            seen.add(group)
            lag = data.get("lag")
            rows.append(Lag("redis", stream, group,
                            int(lag) if lag is not None else None,
                            pending=int(data.get("pending") or 0),
                            consumers=int(data.get("consumers") or 0)))
        rows += [Lag("redis", stream, g, None, error="group missing")
                 for g in expected if g not in seen]
    return rows


def kafka_lag(bootstrap_servers: str, group: str,
              topics: Mapping[str, int] | None = None, timeout: float = 3.0) -> list[Lag]:
    """Committed offsets of ``group`` against the high watermark of every partition."""
    from confluent_kafka import Consumer, TopicPartition

    topics = names.TOPIC_PARTITIONS if topics is None else topics
    rows: list[Lag] = []
    try:
        consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group,
                             "enable.auto.commit": False, "socket.timeout.ms": int(
                                 timeout * 1000), "session.timeout.ms": 6000})
    except Exception as exc:  # noqa: BLE001
        return [Lag("kafka", t, group, None, error=_describe(exc)) for t in topics]
    try:
        for topic, partitions in topics.items():
            try:
                parts = [TopicPartition(topic, p) for p in range(partitions)]
                committed = consumer.committed(parts, timeout=timeout)
                total = 0
                for tp in committed:
                    low, high = consumer.get_watermark_offsets(
                        TopicPartition(topic, tp.partition), timeout=timeout)
                    start = tp.offset if tp.offset >= 0 else low
                    total += max(0, high - start)
                rows.append(Lag("kafka", topic, group, total))
            except Exception as exc:  # noqa: BLE001
                rows.append(Lag("kafka", topic, group, None, error=_describe(exc)))
    finally:
        consumer.close()
    return rows


def as_rows(lags: Iterable[Lag]) -> list[dict[str, Any]]:
    return [lag.__dict__.copy() for lag in lags]
