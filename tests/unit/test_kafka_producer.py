"""RecoveringProducer's decision to replace its producer (the broker side is faked: the
restart itself is tests/integration/test_kafka_recovery.py)."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError

from shared.kafka_producer import RecoveringProducer


class FakeProducer:
    """librdkafka's producer as seen through its callbacks."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.error_cb = config["error_cb"]
        self.purged = False
        self.pending: list[Any] = []

    def produce(self, topic: str, value: bytes, key: Any = None, on_delivery: Any = None
                ) -> None:
        self.pending.append(on_delivery)

    def report(self, err: KafkaError | None) -> None:
        self.pending.pop(0)(err, None)

    def poll(self, timeout: float) -> int:
        return 0

    def purge(self) -> None:
        self.purged = True


def make(now: list[float]) -> tuple[RecoveringProducer, list[FakeProducer]]:
    made: list[FakeProducer] = []

    def factory(config: dict[str, Any]) -> FakeProducer:
        made.append(FakeProducer(config))
        return made[-1]

    return RecoveringProducer({"client.id": "t"}, stuck_after_s=10, factory=factory,
                              clock=lambda: now[0]), made


def test_a_fatal_producer_is_replaced_on_the_next_poll_and_purged():
    now = [0.0]
    producer, made = make(now)
    producer.poll(0)
    assert producer.recreated == 0

    made[0].error_cb(KafkaError(KafkaError.UNKNOWN_PRODUCER_ID, "gone", fatal=True))
    producer.poll(0)

    assert producer.recreated == 1 and len(made) == 2 and made[0].purged
    producer.produce("t", b"x")
    assert made[1].pending and not made[0].pending


def test_a_producer_that_only_fails_for_longer_than_stuck_after_is_replaced():
    now = [0.0]
    producer, made = make(now)
    producer.produce("t", b"ok")
    made[0].report(None)
    now[0] = 5.0
    producer.produce("t", b"lost")
    made[0].report(KafkaError(KafkaError._MSG_TIMED_OUT))
    producer.poll(0)
    assert producer.recreated == 0  # 5 s without a delivery: not yet

    now[0] = 11.0
    producer.poll(0)
    assert producer.recreated == 1

    # the new one gets its own stuck_after_s, and the old one's purged reports don't count
    producer.produce("t", b"x")
    made[1].report(KafkaError(KafkaError._MSG_TIMED_OUT))
    now[0] = 15.0
    producer.poll(0)
    assert producer.recreated == 1


def test_a_failure_right_after_deliveries_is_not_a_stuck_producer():
    now = [100.0]
    producer, made = make(now)
    for _ in range(3):
        producer.produce("t", b"x")
    made[0].report(None)
    made[0].report(KafkaError(KafkaError._MSG_TIMED_OUT))
    made[0].report(KafkaError(KafkaError._MSG_TIMED_OUT))
    producer.poll(0)
    assert producer.recreated == 0
