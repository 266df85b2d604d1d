"""A message no service can process is parked in its dead-letter queue with the reason."""

from __future__ import annotations

import uuid

import pytest
from kombu import Connection

from shared.names import (
    SIGNALS_EXCHANGE,
    TRADE_KEY,
    TRADE_QUEUE,
    kombu_exchange,
)
from tests.support.dead_letters import take_dead_letter

pytestmark = pytest.mark.e2e


def test_poison_trade_message_is_dead_lettered_with_its_reason(settings):
    marker = uuid.uuid4().hex
    with Connection(settings.message_queue.amqp_uri) as conn:
        producer = conn.Producer()
        producer.publish({"type": "trade_intent", "poison": marker},
                         exchange=kombu_exchange(SIGNALS_EXCHANGE), routing_key=TRADE_KEY,
                         delivery_mode=2, serializer="json")

        found = take_dead_letter(conn, TRADE_QUEUE, lambda p: p.get("poison") == marker,
                                 timeout=20)

    assert found is not None, "poison message did not reach the dead-letter queue"
    assert "ValidationError" in found.headers["x-phoenix-error"]
    assert found.headers["x-phoenix-service"] == "execute"
