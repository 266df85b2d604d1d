"""TelemetryWriter against real Redis and the real Kafka-compatible broker: records land in
both, and a dead sink is reported, never raised into the trading path."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from shared.names import SIGNAL_STREAM, SIGNALS_TOPIC, TOPIC_PARTITIONS
from shared.records import Record
from shared.settings import Settings, load_settings
from shared.telemetry import TelemetryWriter, kafka_producer_config

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/15"
# scripts/test exports the test stack's broker; a developer's default is the embedded one
BOOTSTRAP = os.environ.get("PHOENIX__KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092")


@pytest.fixture
def settings(secrets_env) -> Settings:
    return load_settings(redis_streams={"url": REDIS_URL},
                         kafka={"bootstrap_servers": BOOTSTRAP, "delivery_timeout_s": 2.0})


@pytest.fixture
def store() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    client.close()


def _kafka_values(signal_id: str, timeout: float = 10.0) -> list[dict]:
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"t-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(SIGNALS_TOPIC, p, OFFSET_BEGINNING)
                     for p in range(TOPIC_PARTITIONS[SIGNALS_TOPIC])])
    found: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not found:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            value = json.loads(msg.value())
            if value.get("signal_id") == signal_id:
                found.append(value)
    finally:
        consumer.close()
    return found


def _records(store: redis.Redis, signal_id: str) -> list[Record]:
    return [r for r in (Record.from_stream_fields(f)
                        for _, f in store.xrevrange(SIGNAL_STREAM, count=200))
            if r.signal_id == signal_id]


def test_record_lands_on_its_stream_and_its_topic_with_the_signal_id(settings, store):
    writer = TelemetryWriter(settings, store, Producer(kafka_producer_config(settings)))
    signal_id = uuid.uuid4().hex

    writer.emit(SIGNAL_STREAM, Record("signal_accepted", {"symbol": "BTCUSDT"}, signal_id))

    [on_redis] = _records(store, signal_id)
    assert (on_redis.type, on_redis.data) == ("signal_accepted", {"symbol": "BTCUSDT"})
    [on_kafka] = _kafka_values(signal_id)
    assert on_kafka["type"] == "signal_accepted" and on_kafka["ts"] == on_redis.ts
    assert writer.health() == {}


def test_nowait_record_is_delivered_without_blocking_the_caller(settings, store):
    writer = TelemetryWriter(settings, store, Producer(kafka_producer_config(settings)))
    signal_id = uuid.uuid4().hex

    writer.emit_nowait(SIGNAL_STREAM, Record("signal_rejected", {"reason": "x"}, signal_id))
    writer.close()  # flushes what is in flight

    assert _records(store, signal_id)
    assert _kafka_values(signal_id)


def test_unreachable_kafka_is_reported_not_raised_and_redis_still_gets_the_record(
        secrets_env, store):
    dead = load_settings(redis_streams={"url": REDIS_URL},
                         kafka={"bootstrap_servers": "127.0.0.1:1", "delivery_timeout_s": 1.0})
    producer = Producer({**kafka_producer_config(dead), "log_level": 0})
    writer = TelemetryWriter(dead, store, producer)
    signal_id = uuid.uuid4().hex

    writer.emit(SIGNAL_STREAM, Record("signal_scored", {}, signal_id))

    assert _records(store, signal_id)
    assert writer.health()["kafka"].startswith("failing")
    producer.purge()  # nothing left to retry against the dead address
    producer.flush(0)


def test_unreachable_redis_is_reported_not_raised(settings):
    broken = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    writer = TelemetryWriter(settings, broken, None)

    writer.emit(SIGNAL_STREAM, Record("signal_scored", {}, uuid.uuid4().hex))

    assert writer.health()["redis"].startswith("failing")
