"""Kafka telemetry recovers after the broker restarts (chaos finding 4).

A real Tansu broker (the embedded Kafka, memory storage) on a private port is stopped and
started again, empty, as scripts/chaos's kafka-down does: the idempotent producer that
delivered before it then gets UNKNOWN_PRODUCER_ID forever (or turns FATAL) and would never
deliver again; the writer's producer is replaced and records flow again."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from scripts.infra import create_topics, tansu_command
from shared.kafka_producer import recovering_producer
from shared.names import SIGNAL_STREAM, SIGNALS_TOPIC, TOPIC_PARTITIONS
from shared.records import Record
from shared.settings import Settings, load_settings
from shared.telemetry import TelemetryWriter
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/9"



class Tansu:
    def __init__(self, port: int) -> None:
        self.port = port
        self.bootstrap = f"127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(tansu_command("127.0.0.1", self.port),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(self._listening, 30)
        create_topics(self.bootstrap, {SIGNALS_TOPIC: TOPIC_PARTITIONS[SIGNALS_TOPIC]}, 30)

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.2).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


def _wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


@pytest.fixture
def tansu() -> Iterator[Tansu]:
    broker = Tansu(free_port())
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def settings(secrets_env: None, tansu: Tansu) -> Settings:
    return load_settings(redis_streams={"url": REDIS_URL},
                         kafka={"bootstrap_servers": tansu.bootstrap, "delivery_timeout_s": 2.0})


class TopicReader:
    """Every signal id seen on the signals topic since the broker (re)started."""

    def __init__(self, bootstrap: str) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap,
                                  "group.id": f"t-{uuid.uuid4().hex}",
                                  "enable.auto.commit": False, "log_level": 0})
        self.consumer.assign([TopicPartition(SIGNALS_TOPIC, p, OFFSET_BEGINNING)
                              for p in range(TOPIC_PARTITIONS[SIGNALS_TOPIC])])
        self.seen: set[str] = set()

    def read(self, timeout: float = 0.3) -> set[str]:
        msg = self.consumer.poll(timeout)
        if msg is not None and not msg.error():
            self.seen.add(json.loads(msg.value())["signal_id"])
        return self.seen

    def close(self) -> None:
        self.consumer.close()


def test_telemetry_flows_to_kafka_again_after_the_broker_restarts_empty(tansu, settings):
    producer = recovering_producer(settings, log_level=0)
    writer = TelemetryWriter(settings, redis.Redis.from_url(REDIS_URL), producer)
    before = uuid.uuid4().hex
    writer.emit(SIGNAL_STREAM, Record("signal_accepted", {}, before))
    reader = TopicReader(tansu.bootstrap)
    _wait_for(lambda: before in reader.read(), 30)
    reader.close()

    tansu.stop()
    tansu.start()  # memory storage: empty, the producer id it knew is gone

    reader = TopicReader(tansu.bootstrap)
    sent: list[str] = []
    deadline = time.monotonic() + 90
    try:
        # one record a second until one arrives: the old producer never delivers again
        while not (reader.read(1.0) & set(sent)):
            assert time.monotonic() < deadline, "no record reached Kafka after the restart"
            sent.append(uuid.uuid4().hex)
            writer.emit(SIGNAL_STREAM, Record("signal_accepted", {}, sent[-1]))
    finally:
        reader.close()
        writer.close()
    assert producer.recreated >= 1
    assert writer.health() == {}
