"""Dead-lettered trade_execution messages reach execute's outcome handler on real
RabbitMQ (a vhost of its own): a copy stays in ``trade_execution.dlq`` for scripts/dlq,
one goes to ``trade_execution.failed`` with the reason, and the DEAD_LETTER alert is
raised once, also when the handler itself is retried."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.names import (
    DEAD_LETTER_ALERT_CODE,
    TRADE_FAILED_QUEUE,
    TRADE_QUEUE,
    kombu_dead_letter_queue,
    kombu_queue,
)
from tests.integration.test_durable_consumer import Probe, alerts, run_probes, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def start_probe(tmp_path: Path) -> Iterator[Callable[..., Probe]]:
    # the durable-consumer harness, running execute's two trade queues
    yield from run_probes(tmp_path, "tests.support.dead_letter_probe", TRADE_QUEUE)


def _publish(probe: Probe, **body: Any) -> str:
    from kombu import Connection

    signal_id = uuid.uuid4().hex
    with Connection(probe.amqp_uri) as conn:
        q = kombu_queue(TRADE_QUEUE)
        conn.Producer().publish({"type": "trade_intent", "signal_id": signal_id, **body},
                                exchange=q.exchange, routing_key=q.routing_key,
                                serializer="json", delivery_mode=2, declare=[q])
    return signal_id


def _handled(probe: Probe) -> list[tuple[str, str]]:
    return [tuple(v.split("|", 1)) for v in probe.done()]  # type: ignore[misc]


def test_a_dead_letter_reaches_the_outcome_handler_once_and_stays_in_the_dlq(start_probe):
    probe = start_probe(retry_delay=0.2)
    signal_id = _publish(probe, fail_handler=1)  # the handler's first try fails

    [(handled, reason)] = wait_for(lambda: _handled(probe), what="the outcome handler")

    assert handled == signal_id and reason.startswith("ValueError: poison: cannot trade")
    assert probe.attempts(signal_id) == 2  # retried through trade_execution.failed.retry
    [dead] = probe.get_all(kombu_dead_letter_queue(TRADE_QUEUE))
    assert json.loads(dead.body)["signal_id"] == signal_id
    [alert] = wait_for(lambda: alerts(probe), what="the dead-letter alert")
    assert (alert["code"], alert["signal_id"]) == (DEAD_LETTER_ALERT_CODE, signal_id)
    assert probe.depth(TRADE_FAILED_QUEUE) == 0
    assert probe.depth_or_none(TRADE_FAILED_QUEUE + ".dlq") in (None, 0)
