from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp
import redis

from nameko_services.feed.http import HealthServer
from nameko_services.feed.metrics import FeedMetrics
from nameko_services.feed.sink import RecordSink
from shared.records import Record


class FullQueueProducer:
    """librdkafka with its local queue full (Kafka down for a while)."""

    def __init__(self) -> None:
        self.polls = 0

    def produce(self, topic: str, value: bytes, key: str, on_delivery: Any = None) -> None:
        raise BufferError("Local: Queue full")

    def poll(self, timeout: float) -> int:
        self.polls += 1
        return 0

    def flush(self, timeout: float) -> int:
        return 0


def test_a_kafka_outage_drops_and_counts_but_redis_records_are_written(rds: redis.Redis
                                                                       ) -> None:
    stream = f"test:feed:sink:{uuid.uuid4().hex[:8]}"
    metrics = FeedMetrics()
    sink = RecordSink(rds, 1000, metrics, FullQueueProducer(), "trading_events")
    try:
        for i in range(3):
            sink.add(stream, Record("exchange_order", {"i": i}), kafka_key="BTCUSDT")

        sink.flush()

        assert rds.xlen(stream) == 3
        assert metrics.sink_drops.labels("kafka")._value.get() == 3
    finally:
        rds.delete(stream)


def test_redis_down_drops_and_counts_without_raising() -> None:
    metrics = FeedMetrics()
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    sink = RecordSink(dead, 1000, metrics)
    sink.add("any", Record("tick", {}))

    sink.flush()

    assert metrics.sink_drops.labels("redis")._value.get() == 1 and sink.pending == 0


class View:
    def __init__(self, checks: dict[str, bool]) -> None:
        self.metrics = FeedMetrics()
        self.checks = checks

    def readiness(self) -> dict[str, bool]:
        return self.checks


async def _get(checks: dict[str, bool]) -> dict[str, Any]:
    view = View(checks)
    view.metrics.reconnects.labels("mark").inc()
    server = HealthServer(view, "127.0.0.1", 0)
    await server.start()
    out: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{server.port}"
            for path in ("/health", "/ready", "/metrics"):
                async with http.get(base + path) as resp:
                    out[path] = (resp.status, await resp.text())
    finally:
        await server.stop()
    return out


def test_ready_is_503_with_the_failing_checks_while_health_stays_200() -> None:
    out = asyncio.run(_get({"redis": True, "market_fresh": True, "account_fresh": False}))

    assert out["/health"][0] == 200
    status, body = out["/ready"]
    assert status == 503 and json.loads(body)["failing"] == ["account_fresh"]
    assert 'phoenix95_feed_reconnects_total{stream="mark"} 1.0' in out["/metrics"][1]


def test_ready_is_200_when_every_check_passes() -> None:
    out = asyncio.run(_get({"redis": True, "market_fresh": True, "account_fresh": True}))

    assert out["/ready"][0] == 200
