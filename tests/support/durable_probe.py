"""A one-entrypoint Nameko service for the durable-consumer integration tests.

``nameko run --config <file> tests.support.durable_probe`` consumes ``PROBE_QUEUE`` (env)
with :func:`shared.consumer.durable_consume`. The body says how to fail:
``{"id": ..., "fail": "ok" | "retryable" | "redis" | "db" | "poison", "times": n}`` fails
the first ``n`` deliveries (counted in ``x-phoenix-retries``), then succeeds; every
successful handling is appended to the Redis list ``PROBE_DONE`` (env).
"""

from __future__ import annotations

import os
from typing import Any

import redis
from kombu import Exchange, Queue
from sqlalchemy.exc import OperationalError

from shared.consumer import Retryable, durable_consume

QUEUE = os.environ.get("PROBE_QUEUE", "probe")
DONE = os.environ.get("PROBE_DONE", "probe:done")
REDIS_URL = os.environ.get("PROBE_REDIS", "redis://127.0.0.1:6379/9")


def probe_queue(name: str = QUEUE) -> Queue:
    return Queue(name, exchange=Exchange(name + ".x", type="direct", durable=True),
                 routing_key=name, durable=True)


def _fail(kind: str) -> None:
    if kind == "retryable":
        raise Retryable("downstream did not answer")
    if kind == "redis":
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    if kind == "db":
        raise OperationalError("INSERT INTO orders", {}, Exception("server closed the connection"))
    raise ValueError("poison: cannot parse this intent")


class DurableProbe:
    name = "durable_probe"

    def __init__(self) -> None:
        self.redis = redis.Redis.from_url(REDIS_URL)

    @durable_consume(probe_queue())
    def handle(self, body: dict[str, Any]) -> None:
        attempts = self.redis.incr(f"{DONE}:attempts:{body['id']}")
        if body.get("fail", "ok") != "ok" and attempts <= int(body.get("times", 1_000)):
            _fail(str(body["fail"]))
        self.redis.rpush(DONE, str(body["id"]))
