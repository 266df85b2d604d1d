"""Outcome records survive a Redis restart (chaos finding 3).

A real Redis of the test's own (private port, no persistence) is shut down and started
again, empty, as scripts/chaos's redis-restart does. The outcomes emitted while it is down
must reach the streams once it is back, in order and with their signal ids and stamps;
only a full backlog drops, counted and logged critical once."""

from __future__ import annotations

import logging
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from shared.names import RISK_STREAM, TRADE_STREAM
from shared.records import Record
from shared.settings import Settings, load_settings
from shared.telemetry import TelemetryWriter, make_telemetry_redis
from tests.support.ports import free_port

pytestmark = pytest.mark.integration



def _wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


class PrivateRedis:
    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{port}/0"

    def _ping(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        subprocess.run(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                        "--save", "", "--appendonly", "no", "--daemonize", "yes",
                        "--dir", str(self.workdir),
                        "--pidfile", str(self.workdir / "redis.pid")], check=True)
        _wait_for(self._ping)

    def stop(self) -> None:
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "nosave"],
                       capture_output=True, check=False)
        _wait_for(lambda: not self._ping())


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(secrets_env: None, private_redis: PrivateRedis) -> Settings:
    return load_settings(redis_streams={"url": private_redis.url})


def _on_stream(url: str, stream: str) -> list[Record]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return [Record.from_stream_fields(f) for _, f in client.xrange(stream)]
    except redis.RedisError:
        return []
    finally:
        client.close()


def _dropped_full() -> float:
    return REGISTRY.get_sample_value("phoenix95_telemetry_dropped_total",
                                     {"sink": "redis", "reason": "buffer_full"}) or 0.0


def test_outcomes_decided_while_redis_restarts_reach_the_streams_when_it_is_back(
        private_redis, settings):
    writer = TelemetryWriter(settings, make_telemetry_redis(settings), None)
    before = uuid.uuid4().hex
    writer.emit(TRADE_STREAM, Record("entry_filled", {"symbol": "BTCUSDT"}, before))
    assert [r.signal_id for r in _on_stream(private_redis.url, TRADE_STREAM)] == [before]

    private_redis.stop()
    during = [Record("trade_failed", {"reason": "x"}, uuid.uuid4().hex).stamped(),
              Record("risk_check", {"approved": False}, uuid.uuid4().hex).stamped(),
              Record("entry_filled", {"symbol": "ETHUSDT"}, uuid.uuid4().hex).stamped()]
    streams = [TRADE_STREAM, RISK_STREAM, TRADE_STREAM]
    for stream, record in zip(streams, during, strict=True):
        writer.emit(stream, record)
    assert writer.health()["redis"].startswith("failing")
    private_redis.start()  # empty: --save ""

    _wait_for(lambda: len(_on_stream(private_redis.url, TRADE_STREAM)) == 2
              and len(_on_stream(private_redis.url, RISK_STREAM)) == 1)
    trade = _on_stream(private_redis.url, TRADE_STREAM)
    risk = _on_stream(private_redis.url, RISK_STREAM)
    # the same records (type, signal id, data, the stamp of their emit), in order: a
    # consumer can dedupe on them if a write that timed out had landed after all
    assert trade == [during[0], during[2]]
    assert risk == [during[1]]
    _wait_for(lambda: writer.health() == {})
    writer.close()


def test_a_full_backlog_drops_the_overflow_counts_it_and_alerts_once(
        private_redis, settings, caplog):
    writer = TelemetryWriter(settings, make_telemetry_redis(settings), None, redis_backlog=3)
    private_redis.stop()
    full_before = _dropped_full()
    ids = [uuid.uuid4().hex for _ in range(5)]
    with caplog.at_level(logging.CRITICAL, logger="shared.telemetry"):
        for signal_id in ids:
            writer.emit(TRADE_STREAM, Record("trade_failed", {}, signal_id))

    assert _dropped_full() - full_before == 2
    assert len([r for r in caplog.records if r.levelno == logging.CRITICAL]) == 1
    private_redis.start()
    _wait_for(lambda: len(_on_stream(private_redis.url, TRADE_STREAM)) == 3)
    assert [r.signal_id for r in _on_stream(private_redis.url, TRADE_STREAM)] == ids[:3]
    writer.close()
