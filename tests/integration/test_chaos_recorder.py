"""The chaos recorder keeps what was written to the streams even when Redis loses it a
moment later: redis-restart shuts down a Redis without persistence."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from scripts import local_brokers
from scripts.chaos_load import Recorder
from shared.names import RISK_STREAM
from shared.records import Record
from tests.integration.test_private_brokers import free_port_pair

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server not installed")


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[int]:
    port = free_port_pair()
    local_brokers.start_redis("127.0.0.1", port, tmp_path)
    yield port
    local_brokers.stop_redis("127.0.0.1", port)


def test_a_record_written_just_before_redis_restarts_is_kept(redis_port: int,
                                                              tmp_path: Path) -> None:
    client = redis.Redis(port=redis_port, decode_responses=True)
    client.xadd(RISK_STREAM, {"type": "warmup"})
    recorder = Recorder(f"redis://127.0.0.1:{redis_port}/0")
    recorder.start()
    try:
        time.sleep(0.5)  # the reader is waiting on the stream
        rejected = Record("risk_check", {"approved": False, "reasons": ["x"]}, "sig-1")
        client.xadd(RISK_STREAM, rejected.stamped().stream_fields())  # type: ignore[arg-type]
        local_brokers.stop_redis("127.0.0.1", redis_port)  # at once, nothing saved
        local_brokers.start_redis("127.0.0.1", redis_port, tmp_path)
        assert client.xlen(RISK_STREAM) == 0  # Redis lost it
    finally:
        recorder.stop()

    assert [r.type for _, r in recorder.of({"sig-1"})["sig-1"]] == ["risk_check"]
