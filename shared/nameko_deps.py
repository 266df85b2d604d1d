"""Nameko dependency providers shared by the services.

Each provider builds its client once per container (``start``), closes it on
``stop``/``kill`` and hands workers a domain facade, never a raw client.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from eventlet import tpool
from kombu import Queue
from nameko.amqp.publish import Publisher, UndeliverableMessage
from nameko.extensions import DependencyProvider

from shared.kafka_producer import recovering_producer
from shared.models import _Message
from shared.names import kombu_exchange
from shared.redis_conn import redis_client
from shared.settings import Settings, get_settings
from shared.state import StateReader
from shared.telemetry import TelemetryWriter, make_telemetry_redis

log = logging.getLogger(__name__)


def make_redis(settings: Settings) -> redis.Redis:
    return redis_client(
        settings.redis_streams,
        decode_responses=True,
        socket_timeout=5,
        socket_connect_timeout=5,
        health_check_interval=30,
    )


class Config(DependencyProvider):
    """The validated, frozen settings of this process."""

    def get_dependency(self, worker_ctx: Any) -> Settings:
        return get_settings()


class Telemetry(DependencyProvider):
    """A :class:`TelemetryWriter` over Redis Streams and Kafka, shared by all workers.

    Never blocks a worker: Kafka delivery reports are served by a managed thread (librdkafka
    runs in ``tpool``), Redis has a telemetry-only client with short timeouts.
    """

    def start(self) -> None:
        settings = get_settings()
        self.writer = TelemetryWriter(
            settings,
            make_telemetry_redis(settings),
            recovering_producer(settings),
            run_blocking=tpool.execute,
            spawn=self.container.spawn_managed_thread,
        )

    def stop(self) -> None:
        try:
            self.writer.close()
        except Exception:
            log.exception("telemetry close failed")

    def kill(self) -> None:
        self.stop()

    def get_dependency(self, worker_ctx: Any) -> TelemetryWriter:
        return self.writer


class State(DependencyProvider):
    """The feed's market and account state (:class:`shared.state.StateReader`)."""

    def setup(self) -> None:
        settings = get_settings()
        self.reader = StateReader(make_redis(settings), settings)

    def get_dependency(self, worker_ctx: Any) -> StateReader:
        return self.reader


class BusError(RuntimeError):
    """A message could not be published durably (no confirm, or no queue bound)."""


class MessageBus:
    """Publish typed messages with publisher confirms and mandatory routing."""

    def __init__(self, settings: Settings, amqp_uri: str) -> None:
        mq = settings.message_queue
        self._publisher = Publisher(
            amqp_uri,
            use_confirms=mq.publisher_confirms,
            mandatory=mq.mandatory,
            ssl=mq.ssl_options(),
            retry=True,
            retry_policy={
                "max_retries": mq.retries,
                "interval_start": 0,
                "interval_step": mq.retry_delay,
                "interval_max": mq.retry_delay,
            },
        )

    def publish(
        self, exchange: str, routing_key: str, message: _Message | dict[str, Any],
        *, declare: list[Queue] | None = None, headers: dict[str, Any] | None = None,
    ) -> None:
        body = message.wire() if isinstance(message, _Message) else message
        try:
            self._publisher.publish(
                body,
                exchange=kombu_exchange(exchange),
                routing_key=routing_key,
                declare=declare or [],
                headers=headers or {},
            )
        except UndeliverableMessage as exc:
            raise BusError(f"no queue bound to {exchange}/{routing_key}") from exc
        except Exception as exc:
            raise BusError(f"publish to {exchange}/{routing_key} failed: {exc}") from exc


class Bus(DependencyProvider):
    """A :class:`MessageBus` on the container's broker."""

    def setup(self) -> None:
        self.bus = MessageBus(get_settings(), self.container.config["AMQP_URI"])

    def get_dependency(self, worker_ctx: Any) -> MessageBus:
        return self.bus
