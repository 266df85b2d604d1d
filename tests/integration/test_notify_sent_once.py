"""A trading state change reaches Telegram's outbox once, on real Redis (db 13): risk
publishes one alert with an id; two notify instances that both receive it (a RabbitMQ
redelivery after a crash, or the same message handled twice) queue one outbox entry."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from nameko.testing.services import worker_factory

from nameko_services.notify.alerts import Alerts, SentOnce
from nameko_services.notify.engine import AlertPolicy
from nameko_services.notify.outbox import AlertOutbox
from shared.models import RiskAlert

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/13"


@pytest.fixture
def tag() -> Iterator[tuple[redis.Redis, str]]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    prefix = f"test:notify-once:{uuid.uuid4().hex[:10]}:"
    yield client, prefix
    for key in client.scan_iter(prefix + "*"):
        client.delete(key)
    client.close()


def notify_instance(client: redis.Redis, prefix: str) -> Any:
    """One notify process's service worker: its own outbox and latch objects, shared Redis."""
    from nameko_services.notify.service import NotifyService

    outbox = AlertOutbox(client, stream=prefix + "outbox", dead_letters_key=prefix + "dead")
    alerts = Alerts(outbox, AlertPolicy("normal"), SentOnce(client, prefix=prefix + "sent:"))
    return worker_factory(NotifyService, alerts=alerts)


def state_change(change_id: str) -> dict[str, Any]:
    """What risk publishes on a change (its _change_state builds the same alert)."""
    return RiskAlert(level="critical", code="STATE_CHANGED", alert_id=f"state:{change_id}",
                     text="Trading state ACTIVE -> HALTED: daily_loss_limit").wire()


def outbox_texts(client: redis.Redis, prefix: str) -> list[str]:
    return [fields["data"] for _, fields in client.xrange(prefix + "outbox")]


def test_two_notify_instances_queue_one_state_change(
        secrets_env: dict[str, str], tag: tuple[redis.Redis, str]) -> None:
    client, prefix = tag
    first, second = notify_instance(client, prefix), notify_instance(client, prefix)
    body = state_change("c1")
    barrier = threading.Barrier(2)

    def deliver(worker: Any) -> None:
        barrier.wait()  # both handle it at the same moment: the latch decides, not timing
        worker.on_risk_alert(body)

    threads = [threading.Thread(target=deliver, args=(w,)) for w in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first.on_risk_alert(body)  # and a late redelivery

    texts = outbox_texts(client, prefix)
    assert len(texts) == 1 and "ACTIVE -> HALTED" in texts[0]
    assert 0 < client.ttl(prefix + "sent:risk:state:c1") <= 86400


def test_the_next_change_and_other_alerts_still_go_out(
        secrets_env: dict[str, str], tag: tuple[redis.Redis, str]) -> None:
    client, prefix = tag
    first, second = notify_instance(client, prefix), notify_instance(client, prefix)

    first.on_risk_alert(state_change("c1"))
    second.on_risk_alert(state_change("c2"))  # same words, a new change: sent again
    liquidation = RiskAlert(level="warning", code="LIQUIDATION_NEAR", symbol="ETHUSDT",
                            text="ETHUSDT mark within 1.0% of liquidation").wire()
    first.on_risk_alert(liquidation)
    second.on_risk_alert(liquidation)  # no id: not de-duplicated (as before)

    assert len(outbox_texts(client, prefix)) == 4


def test_a_claim_is_released_when_the_outbox_write_fails(
        secrets_env: dict[str, str], tag: tuple[redis.Redis, str]) -> None:
    client, prefix = tag
    worker = notify_instance(client, prefix)
    client.set(prefix + "outbox", "not a stream")  # XADD now fails with WRONGTYPE

    with pytest.raises(redis.ResponseError):
        worker.on_risk_alert(state_change("c1"))
    assert not client.exists(prefix + "sent:risk:state:c1")

    client.delete(prefix + "outbox")
    worker = notify_instance(client, prefix)  # durable_consume's retry, maybe on another one
    worker.on_risk_alert(state_change("c1"))
    assert len(outbox_texts(client, prefix)) == 1
