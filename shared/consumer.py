"""``@durable_consume``: a Nameko queue consumer that never loses or loops on a message.

* success: ack (only once the worker, and therefore its database commit, finished);
* retryable failure (:class:`Retryable`, a Redis error, a database disconnect): published
  to ``<queue>.retry`` with ``x-phoenix-retries`` + 1 and a per-message TTL of
  ``message_queue.retry_delay``; RabbitMQ dead-letters it back to ``<queue>`` when the TTL
  expires, so the delay holds neither a worker nor the message. At most ``retries`` times
  (the brief's "3 retries 5 s apart"), then dead-lettered;
* any other failure (a poison message): dead-lettered at once to ``<queue>.dlq`` with the
  reason in ``x-phoenix-error``, and a critical ``DEAD_LETTER`` :class:`RiskAlert` is
  published to ``risk_alerts`` for notify (``scripts/dlq`` inspects and replays them).

The original is acked only after the retry or dead-letter publish was confirmed by the
broker (publisher confirms, mandatory routing); if that publish fails, the message is
requeued rather than dropped.
"""

from __future__ import annotations

import logging
import time
import traceback
from functools import partial
from typing import Any

import redis
from kombu.message import Message
from nameko.amqp.publish import Publisher
from nameko.exceptions import ContainerBeingKilled
from nameko.messaging import Consumer
from sqlalchemy.exc import DBAPIError, OperationalError

from shared.models import RiskAlert
from shared.names import (
    DEAD_LETTER_ALERT_CODE,
    DEAD_LETTER_EXCHANGE,
    RISK_ALERT_KEY,
    RISK_ALERT_QUEUE,
    RISK_EXCHANGE,
    kombu_dead_letter_queue,
    kombu_exchange,
    kombu_queue,
    kombu_retry_queue,
)
from shared.settings import get_settings

log = logging.getLogger(__name__)

RETRY_HEADER = "x-phoenix-retries"
ERROR_HEADER = "x-phoenix-error"
SERVICE_HEADER = "x-phoenix-service"
QUEUE_HEADER = "x-phoenix-queue"  # the work queue a dead letter came from
DEAD_AT_HEADER = "x-phoenix-dead-lettered-at"  # epoch seconds


class Retryable(Exception):
    """A transient failure: the same message may succeed later (broker, RPC, network)."""


def is_retryable(exc: BaseException) -> bool:
    """Transient by type, or caused by a transient failure (a wrapped Redis/DB blip)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (Retryable, redis.RedisError, OperationalError)):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        current = current.__cause__ or current.__context__
    return False


def describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


class DurableConsumer(Consumer):
    def handle_message_processed(
        self, message: Message, result: Any = None, exc_info: Any = None
    ) -> None:
        if exc_info is None:
            self.queue_consumer.ack_message(message)
            return
        exc = exc_info[1]
        settings = get_settings().message_queue
        retries = int((message.headers or {}).get(RETRY_HEADER, 0))
        queue = self.queue.name
        dead_reason = ""
        try:
            if is_retryable(exc) and retries < settings.retries:
                log.warning("retrying %s message in %.1fs (%d/%d): %s", queue,
                            settings.retry_delay, retries + 1, settings.retries, describe(exc))
                self._publish(message, "", kombu_retry_queue(queue).name,
                              {RETRY_HEADER: retries + 1}, declare=kombu_retry_queue(queue),
                              expiration=settings.retry_delay)
            else:
                dead_reason = describe(exc)
                if is_retryable(exc):
                    dead_reason = f"gave up after {retries} retries: {dead_reason}"
                log.error("dead-lettering %s message: %s", queue, dead_reason)
                self._publish(
                    message, DEAD_LETTER_EXCHANGE, queue,
                    {ERROR_HEADER: dead_reason[:1000], SERVICE_HEADER: self.container.service_name,
                     QUEUE_HEADER: queue, DEAD_AT_HEADER: time.time()},
                    declare=kombu_dead_letter_queue(queue),
                )
        except Exception:
            log.exception("could not republish %s message; requeueing it", queue)
            self.queue_consumer.requeue_message(message)
            return
        self.queue_consumer.ack_message(message)
        if dead_reason:
            self._alert_dead_letter(queue, dead_reason, _signal_id(message))

    def _publisher(self) -> Publisher:
        return Publisher(self.container.config["AMQP_URI"], use_confirms=True, mandatory=True,
                         retry=True)

    def _publish(
        self, message: Message, exchange: str, routing_key: str, extra: dict[str, Any],
        *, declare: Any, expiration: float | None = None,
    ) -> None:
        headers = dict(message.headers or {})
        headers.update(extra)
        kwargs: dict[str, Any] = {}
        if expiration is not None:
            kwargs["expiration"] = expiration
        self._publisher().publish(
            message.body,
            exchange=kombu_exchange(exchange) if exchange else "",
            routing_key=routing_key,
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=2,
            declare=[declare],
            **kwargs,
        )

    def _alert_dead_letter(self, queue: str, reason: str, signal_id: str) -> None:
        """One critical alert per dead letter, through notify's risk_alerts path.

        A dead letter of risk_alerts itself is only logged: alerting about it there could
        dead-letter again and loop.
        """
        text = (f"message dead-lettered to {queue}.dlq by {self.container.service_name}: "
                f"{reason[:500]} (scripts/dlq list)")
        if queue == RISK_ALERT_QUEUE:
            log.critical("%s", text)
            return
        alert = RiskAlert(level="critical", code=DEAD_LETTER_ALERT_CODE, text=text,
                          signal_id=signal_id)
        try:
            self._publisher().publish(alert.wire(), exchange=kombu_exchange(RISK_EXCHANGE),
                                      routing_key=RISK_ALERT_KEY, serializer="json",
                                      declare=[kombu_queue(RISK_ALERT_QUEUE)])
        except Exception:
            log.exception("dead-letter alert not delivered: %s", text)


class DeadLetterConsumer(DurableConsumer):
    """A durable consumer of dead letters: the handler gets ``(body, reason)``, the reason
    the message was dead-lettered for (``x-phoenix-error``, or RabbitMQ's own x-death)."""

    def handle_message(self, body: Any, message: Message) -> None:
        headers = message.headers or {}
        reason = str(headers.get(ERROR_HEADER) or "")
        if not reason:
            deaths = headers.get("x-death") or [{}]
            reason = f"dead-lettered by RabbitMQ ({deaths[0].get('reason', 'unknown')})"
        handle_result = partial(self.handle_result, message)
        try:
            self.container.spawn_worker(self, (body, reason), {},
                                        context_data=self.unpack_message_headers(message),
                                        handle_result=handle_result)
        except ContainerBeingKilled:
            self.queue_consumer.requeue_message(message)


def _signal_id(message: Message) -> str:
    try:
        payload = message.payload
    except Exception:  # noqa: BLE001 - a body that does not even decode
        return ""
    return str(payload.get("signal_id") or "") if isinstance(payload, dict) else ""


durable_consume = DurableConsumer.decorator
dead_letter_consume = DeadLetterConsumer.decorator
