"""``@durable_consume``: a Nameko queue consumer that never loses or loops on a message.

* success: ack (only once the worker, and therefore its database commit, finished);
* :class:`Retryable` failure: republished to the same queue after ``retry_delay``
  seconds with ``x-phoenix-retries`` + 1, at most ``retries`` times (the brief's
  "3 retries 5 s apart"), then dead-lettered;
* any other failure (a poison message): dead-lettered at once to ``<queue>.dlq`` with the
  reason in ``x-phoenix-error``.

The original is acked only after the republish or dead-letter publish was confirmed;
if that publish fails, the message is requeued rather than dropped.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import eventlet
from kombu.message import Message
from nameko.amqp.publish import get_producer
from nameko.messaging import Consumer

from shared.names import DEAD_LETTER_EXCHANGE, kombu_dead_letter_queue, kombu_exchange
from shared.settings import get_settings

log = logging.getLogger(__name__)

RETRY_HEADER = "x-phoenix-retries"
ERROR_HEADER = "x-phoenix-error"
SERVICE_HEADER = "x-phoenix-service"


class Retryable(Exception):
    """A transient failure: the same message may succeed later (broker, RPC, network)."""


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
        try:
            if isinstance(exc, Retryable) and retries < settings.retries:
                log.warning("retrying %s message in %.0fs (%d/%d): %s", self.queue.name,
                            settings.retry_delay, retries + 1, settings.retries, exc)
                eventlet.sleep(settings.retry_delay)
                self._republish(message, "", self.queue.name, {RETRY_HEADER: retries + 1})
            else:
                reason = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                log.error("dead-lettering %s message: %s", self.queue.name, reason)
                self._republish(
                    message, DEAD_LETTER_EXCHANGE, self.queue.name,
                    {ERROR_HEADER: reason[:1000], SERVICE_HEADER: self.container.service_name},
                )
        except Exception:
            log.exception("could not republish %s message; requeueing it", self.queue.name)
            self.queue_consumer.requeue_message(message)
            return
        self.queue_consumer.ack_message(message)

    def _republish(
        self, message: Message, exchange: str, routing_key: str, extra: dict[str, Any]
    ) -> None:
        headers = dict(message.headers or {})
        headers.update(extra)
        declare = [kombu_dead_letter_queue(self.queue.name)] if exchange else []
        with get_producer(self.container.config["AMQP_URI"], True) as producer:
            producer.publish(
                message.body,
                exchange=kombu_exchange(exchange) if exchange else "",
                routing_key=routing_key,
                headers=headers,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                delivery_mode=2,
                mandatory=True,
                declare=declare,
                retry=True,
            )


durable_consume = DurableConsumer.decorator
