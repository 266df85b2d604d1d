"""A Nameko service with execute's two trade queues for the dead-letter topology test.

``nameko run --config <file> tests.support.dead_letter_probe`` consumes
``trade_execution`` with :func:`shared.consumer.durable_consume` (every message is poison)
and ``trade_execution.failed`` with :func:`shared.consumer.dead_letter_consume`, which
appends ``signal_id|reason`` to the Redis list ``PROBE_DONE`` (env) and fails the first
``fail_handler`` deliveries of a body with a retryable error.
"""

from __future__ import annotations

import os
from typing import Any

import redis

from shared.consumer import Retryable, dead_letter_consume, durable_consume
from shared.names import TRADE_FAILED_QUEUE, TRADE_QUEUE, kombu_queue

DONE = os.environ.get("PROBE_DONE", "probe:done")
REDIS_URL = os.environ.get("PROBE_REDIS", "redis://127.0.0.1:6379/9")


class DeadLetterProbe:
    name = "dead_letter_probe"

    def __init__(self) -> None:
        self.redis = redis.Redis.from_url(REDIS_URL)

    @durable_consume(kombu_queue(TRADE_QUEUE))
    def execute_trade(self, body: dict[str, Any]) -> None:
        raise ValueError(f"poison: cannot trade {body.get('signal_id')}")

    @dead_letter_consume(kombu_queue(TRADE_FAILED_QUEUE))
    def trade_dead_lettered(self, body: dict[str, Any], reason: str) -> None:
        attempts = self.redis.incr(f"{DONE}:attempts:{body['signal_id']}")
        if attempts <= int(body.get("fail_handler", 0)):
            raise Retryable("database blip")
        self.redis.rpush(DONE, f"{body['signal_id']}|{reason}")
