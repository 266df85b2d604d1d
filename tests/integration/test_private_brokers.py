"""up's private brokers, for real: a Redis server and a RabbitMQ node of one stack alone,
started on a free port, restarted the way scripts/chaos does it, and stopped by down,
while the machine's own brokers (6379, 5672) are left alone."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from scripts import infra, lib, local_brokers
from shared.settings import Settings, load_settings

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server not installed")


def free_port_pair() -> int:
    """A port p with p and p + 1 free (RabbitMQ's distribution port is AMQP + 1)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < 65000 and not lib.tcp_open("127.0.0.1", port + 1):
            return port
    raise RuntimeError("no free port pair")


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # not pytest's tmp_path: its parent is private to root, and the RabbitMQ node runs as
    # the rabbitmq user, which must reach its files
    path = Path(tempfile.mkdtemp(prefix="phoenix95-private-"))
    path.chmod(0o755)
    (path / lib.STARTED_BY_US).mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_private_redis_started_restarted_empty_and_stopped(run_dir: Path,
                                                           secrets_env: dict[str, str]
                                                           ) -> None:
    port = free_port_pair()
    settings = load_settings(redis_streams={"url": f"redis://127.0.0.1:{port}/3"})
    try:
        infra.ensure_redis(settings, run_dir)
        client = redis.Redis(port=port, db=3)
        assert client.xinfo_groups("trade:stream")  # up's consumer groups are there
        assert local_brokers.started(run_dir, "redis") is not None
        client.set("before", "1")

        host, p = "127.0.0.1", port
        local_brokers.stop_redis(host, p)
        assert not lib.tcp_open(host, p)
        local_brokers.start_redis(host, p, run_dir)  # what chaos's redis-restart does
        assert redis.Redis(port=port, db=3).get("before") is None  # no persistence
    finally:
        infra.stop_redis(run_dir)
    assert not lib.tcp_open("127.0.0.1", port)
    assert local_brokers.started(run_dir, "redis") is None


@pytest.mark.skipif(shutil.which("rabbitmq-server") is None or os.geteuid() != 0,
                    reason="rabbitmq-server not installed or not root")
def test_private_rabbit_node_serves_the_stack_and_stops_with_down(run_dir: Path,
                                                                  secrets_env: dict[str, str]
                                                                  ) -> None:
    port = free_port_pair()
    settings: Settings = load_settings(
        message_queue={"port": port, "virtual_host": "/private_test",
                       "username": "phoenix95_private"})
    try:
        infra.ensure_rabbitmq(settings, run_dir)
        node = local_brokers.rabbit_node(run_dir)
        assert node == f"phoenix95-{port}@localhost"
        ok, why = infra.rabbit_reachable(settings)
        assert ok, why
        code, vhosts = local_brokers.ctl(node, "-q", "list_vhosts", "name")
        assert code == 0 and "/private_test" in vhosts
        # the machine's node knows nothing of it
        code, machine_vhosts = local_brokers.ctl(None, "-q", "list_vhosts", "name")
        assert code == 0 and "/private_test" not in machine_vhosts.split()

        # what chaos's rabbit-restart does: only this node's clients lose the broker
        assert local_brokers.ctl(node, "stop_app")[0] == 0
        assert not lib.tcp_open("127.0.0.1", port)
        assert local_brokers.ctl(node, "start_app")[0] == 0
        assert lib.wait_tcp("127.0.0.1", port, 60)
    finally:
        infra.stop_rabbitmq(run_dir)
    assert lib.wait_tcp("127.0.0.1", 5672, 1)  # the machine's node still serves
    assert local_brokers.rabbit_node(run_dir) is None
