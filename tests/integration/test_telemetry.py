"""TelemetryWriter against real Redis and the real Kafka-compatible broker: records land in
both, and a dead or slow sink is counted and reported, never raised into (or waited for
by) the trading path.

The first two tests need a live Kafka-compatible broker (scripts/test exports the test
stack's Tansu, 127.0.0.1:19092); every other test runs without one."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from prometheus_client import REGISTRY

from shared.names import SIGNAL_STREAM, SIGNALS_TOPIC, TOPIC_PARTITIONS
from shared.records import Record
from shared.settings import Settings, load_settings
from shared.telemetry import TelemetryWriter, kafka_producer_config, make_telemetry_redis

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/9"
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
    writer.close()

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
    assert writer.health() == {}

    assert _records(store, signal_id)
    assert _kafka_values(signal_id)


def test_unreachable_redis_is_reported_not_raised(settings):
    broken = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    writer = TelemetryWriter(settings, broken, None)

    writer.emit(SIGNAL_STREAM, Record("signal_scored", {}, uuid.uuid4().hex))

    assert writer.health()["redis"].startswith("failing")


# --------------------------------------------------------------------------- faults


def _dropped(sink: str, reason: str) -> float:
    return REGISTRY.get_sample_value("phoenix95_telemetry_dropped_total",
                                     {"sink": sink, "reason": reason}) or 0.0


def _dead_kafka(secrets_env: Any, timeout_s: float = 3.0, **producer: Any
                ) -> tuple[Settings, Producer]:
    dead = load_settings(redis_streams={"url": REDIS_URL},
                         kafka={"bootstrap_servers": "127.0.0.1:1",
                                "delivery_timeout_s": timeout_s})
    return dead, Producer({**kafka_producer_config(dead), "log_level": 0, **producer})


def _wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_kafka_outage_never_makes_emit_wait_and_redis_still_gets_every_record(
        secrets_env, store):
    dead, producer = _dead_kafka(secrets_env, timeout_s=3.0)
    writer = TelemetryWriter(dead, store, producer)
    signal_id = uuid.uuid4().hex

    started = time.monotonic()
    for i in range(20):
        writer.emit(SIGNAL_STREAM, Record("signal_scored", {"i": i}, signal_id))
    elapsed = time.monotonic() - started

    # waiting for Kafka's ack took delivery_timeout_s (3 s) per record: 60 s here
    assert elapsed < 2.0, f"20 emits took {elapsed:.1f}s with Kafka down"
    assert len(_records(store, signal_id)) == 20
    producer.purge()
    writer.close()


def test_records_beyond_the_kafka_buffer_are_dropped_counted_and_logged_once(
        secrets_env, store, caplog):
    dead, producer = _dead_kafka(secrets_env, timeout_s=1.0,
                                 **{"queue.buffering.max.messages": 5})
    writer = TelemetryWriter(dead, store, producer)
    full_before = _dropped("kafka", "buffer_full")
    late_before = _dropped("kafka", "not_acknowledged")

    with caplog.at_level(logging.WARNING, logger="shared.telemetry"):
        for i in range(12):
            writer.emit(SIGNAL_STREAM, Record("signal_scored", {"i": i}, uuid.uuid4().hex))
        assert _dropped("kafka", "buffer_full") - full_before == 7
        # the 5 buffered ones time out in librdkafka; the background loop accounts them
        _wait_for(lambda: _dropped("kafka", "not_acknowledged") - late_before == 5)

    assert writer.health()["kafka"].startswith("failing")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "kafka failing" in errors[0].getMessage()
    writer.close()


def _held() -> float:
    return REGISTRY.get_sample_value("phoenix95_telemetry_held_records",
                                     {"sink": "redis"}) or 0.0


def test_a_redis_that_never_answers_costs_one_short_timeout_then_is_skipped(secrets_env):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # accepts connections, never answers a command
    port = listener.getsockname()[1]
    settings = load_settings(redis_streams={"url": f"redis://127.0.0.1:{port}/0"})
    now = [1000.0]
    writer = TelemetryWriter(settings, make_telemetry_redis(settings), None,
                             clock=lambda: now[0])

    started = time.monotonic()
    writer.emit(SIGNAL_STREAM, Record("signal_scored", {}, uuid.uuid4().hex))
    first = time.monotonic() - started
    started = time.monotonic()
    for _ in range(10):
        writer.emit(SIGNAL_STREAM, Record("signal_scored", {}, uuid.uuid4().hex))
    rest = time.monotonic() - started

    # redis-py's default retries made the first one wait ~10 s
    assert first < 2.0, f"one emit waited {first:.1f}s for a silent Redis"
    assert rest < 0.5, f"10 emits during the back-off took {rest:.1f}s"
    assert len(writer._held) == 11  # held for the background loop, none dropped
    assert writer.health()["redis"].startswith("failing")
    writer._closed = True
    listener.close()


def test_redis_recovery_resends_what_was_held_and_is_logged_once(secrets_env, store, caplog):
    settings = load_settings(redis_streams={"url": REDIS_URL})
    now = [1000.0]
    broken = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    writer = TelemetryWriter(settings, broken, None, clock=lambda: now[0])
    held = [uuid.uuid4().hex, uuid.uuid4().hex]
    with caplog.at_level(logging.WARNING, logger="shared.telemetry"):
        for signal_id in held:
            writer.emit(SIGNAL_STREAM, Record("signal_scored", {}, signal_id))
        writer._redis = store  # Redis is back
        now[0] += 60
        signal_id = uuid.uuid4().hex
        writer.emit(SIGNAL_STREAM, Record("signal_scored", {}, signal_id))
        _wait_for(lambda: writer.health() == {})

    # in the order they were emitted, the held ones first
    order = [r.signal_id for r in reversed(
        [Record.from_stream_fields(f) for _, f in store.xrevrange(SIGNAL_STREAM, count=50)])]
    assert [s for s in order if s in (*held, signal_id)] == [*held, signal_id]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("redis failing" in m for m in messages) == 1
    [recovered] = [m for m in messages if "recovered" in m]
    assert "0 record(s) dropped" in recovered and "3 held and re-sent" in recovered
    writer.close()


def test_a_record_that_cannot_be_serialised_is_dropped_not_raised(settings, store):
    writer = TelemetryWriter(settings, store, None)

    writer.emit(SIGNAL_STREAM, Record("signal_scored", {"bad": object()}, uuid.uuid4().hex))

    assert "redis" in writer.health()
