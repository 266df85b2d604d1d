"""The broker restarts of scripts/chaos hit only a stack's private broker: up starts one on a
free non-standard local port, and chaos refuses a restart of the machine's shared one."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts import local_brokers
from scripts.chaos import choose_scenarios
from scripts.chaos_faults import Stack
from shared.settings import Settings, load_settings


@pytest.fixture
def settings(secrets_env: dict[str, str]) -> Settings:
    return load_settings()


def test_only_a_free_local_non_standard_port_gets_a_private_broker() -> None:
    assert local_brokers.is_private_port("redis", "127.0.0.1", 27379)
    assert local_brokers.is_private_port("rabbitmq", "localhost", 27672)
    assert not local_brokers.is_private_port("redis", "127.0.0.1", 6379)
    assert not local_brokers.is_private_port("rabbitmq", "127.0.0.1", 5672)
    assert not local_brokers.is_private_port("redis", "10.1.2.3", 27379)


def test_private_rabbit_node_has_its_own_name_ports_files_and_no_plugins(tmp_path: Path
                                                                         ) -> None:
    node = local_brokers.RabbitNode.of("127.0.0.1", 27672, tmp_path)
    env = node.env()
    assert node.name == "phoenix95-27672@localhost" and env["RABBITMQ_NODENAME"] == node.name
    assert env["RABBITMQ_NODE_PORT"] == "27672" and env["RABBITMQ_DIST_PORT"] == "27673"
    for key in ("RABBITMQ_MNESIA_BASE", "RABBITMQ_LOG_BASE", "RABBITMQ_CONFIG_FILE",
                "RABBITMQ_ENABLED_PLUGINS_FILE", "RABBITMQ_PID_FILE"):
        assert env[key].startswith(str(tmp_path)), key


def test_private_redis_keeps_its_files_in_the_run_dir(tmp_path: Path) -> None:
    cmd = local_brokers.redis_start_command(27379, tmp_path)
    assert cmd[cmd.index("--port") + 1] == "27379"
    assert cmd[cmd.index("--dir") + 1] == str(tmp_path / "redis-27379")
    assert cmd[cmd.index("--save") + 1] == ""  # as the machine's: a restart loses the data


def test_broker_restarts_are_refused_on_the_machines_brokers(settings: Settings,
                                                            tmp_path: Path) -> None:
    stack = Stack(settings, tmp_path, "http://127.0.0.1:1")

    assert choose_scenarios(stack, "redis-restart", destructive=False) is None
    assert choose_scenarios(stack, "kill-brain,rabbit-restart", destructive=False) is None
    assert choose_scenarios(stack, "redis-restart", destructive=True) == ["redis-restart"]
    default = choose_scenarios(stack, None, destructive=False)
    assert default is not None and "kill-execute" in default
    assert "redis-restart" not in default and "rabbit-restart" not in default


def test_broker_restarts_run_by_default_on_private_brokers(settings: Settings,
                                                           tmp_path: Path) -> None:
    stack = Stack(settings, tmp_path, "http://127.0.0.1:1")
    local_brokers.record(tmp_path, "redis", "127.0.0.1", 27379)
    assert choose_scenarios(stack, "redis-restart", destructive=False) == ["redis-restart"]
    assert choose_scenarios(stack, "rabbit-restart", destructive=False) is None

    local_brokers.record(tmp_path, "rabbitmq", "127.0.0.1", 27672, "phoenix95-27672@localhost")
    assert stack.rabbit_node == "phoenix95-27672@localhost"
    default = choose_scenarios(stack, None, destructive=False)
    assert default is not None
    assert {"redis-restart", "rabbit-restart"} <= set(default)
    assert "exchange-lost-answers" not in default  # only when named
