"""A message no service can process is parked in its dead-letter queue with the reason."""

from __future__ import annotations

import time
import uuid

import pytest
from kombu import Connection

from shared.names import (
    SIGNALS_EXCHANGE,
    TRADE_KEY,
    TRADE_QUEUE,
    kombu_dead_letter_queue,
    kombu_exchange,
)

pytestmark = pytest.mark.e2e


def test_poison_trade_message_is_dead_lettered_with_its_reason(settings):
    marker = uuid.uuid4().hex
    with Connection(settings.message_queue.amqp_uri) as conn:
        producer = conn.Producer()
        producer.publish({"type": "trade_intent", "poison": marker},
                         exchange=kombu_exchange(SIGNALS_EXCHANGE), routing_key=TRADE_KEY,
                         delivery_mode=2, serializer="json")

        found = None
        held = []  # other dead letters stay parked: put back untouched at the end
        dlq = kombu_dead_letter_queue(TRADE_QUEUE)(conn.channel())
        dlq.declare()
        deadline = time.monotonic() + 20
        try:
            while found is None and time.monotonic() < deadline:
                msg = dlq.get(no_ack=False)
                if msg is None:
                    time.sleep(0.2)
                elif msg.payload.get("poison") == marker:
                    found = msg
                    msg.ack()
                else:
                    held.append(msg)
        finally:
            for msg in held:
                msg.requeue()

    assert found is not None, "poison message did not reach the dead-letter queue"
    assert "ValidationError" in found.headers["x-phoenix-error"]
    assert found.headers["x-phoenix-service"] == "execute"
