"""Private local brokers: a Redis server or a RabbitMQ node of one stack, in its run dir.

``up`` starts one when the settings point at a local port that nobody serves and that is
not the broker's standard port (6379 / 5672, where the machine's own server belongs). Such
a broker belongs to that stack alone: ``down`` stops it, and ``scripts/chaos`` may restart
it (redis-restart, rabbit-restart) without touching anyone else's.

The RabbitMQ node gets its own node name (``phoenix95-<port>@localhost``), AMQP port,
distribution port (AMQP port + 1), data, log, config file (the machine's rabbitmq.conf
pins the listener to 5672) and an empty plugin list (no management listener on 15672).
It shares the machine's Erlang cookie, so ``rabbitmqctl -n <node>`` reaches it.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from scripts import lib

STANDARD_PORTS = {"redis": 6379, "rabbitmq": 5672}
RABBIT_USER = "rabbitmq"  # the Debian wrapper runs the node as this user when root starts it


def is_private_port(broker: str, host: str, port: int) -> bool:
    """A port ``up`` may start a private server on: local, and not the standard one."""
    return lib.is_local_host(host) and port != STANDARD_PORTS[broker]


def marker(run_dir: Path, broker: str) -> Path:
    return run_dir / lib.STARTED_BY_US / broker


# --------------------------------------------------------------------------- Redis


def redis_dir(run_dir: Path, port: int) -> Path:
    return run_dir / f"redis-{port}"


def redis_start_command(port: int, run_dir: Path) -> list[str]:
    """No persistence (like the machine's): a restart loses everything, as in production
    without AOF; pid and log files in the run dir so the server can be found again."""
    base = redis_dir(run_dir, port)
    return ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(port),
            "--save", "", "--appendonly", "no", "--dir", str(base),
            "--pidfile", str(base / "redis.pid"), "--logfile", str(base / "redis.log")]


def start_redis(host: str, port: int, run_dir: Path, wait: float = 30.0) -> None:
    redis_dir(run_dir, port).mkdir(parents=True, exist_ok=True)
    cmd = redis_start_command(port, run_dir)
    code, out = lib.run_quiet(cmd, timeout=wait)
    if code != 0:
        raise RuntimeError(f"'{' '.join(cmd)}' failed ({code}): {out.strip()}")
    if not lib.wait_tcp(host, port, wait):
        raise RuntimeError(f"redis started but {host}:{port} did not open within {wait:.0f}s")


def stop_redis(host: str, port: int) -> tuple[int, str]:
    return lib.run_quiet(["redis-cli", "-h", host, "-p", str(port), "shutdown", "nosave"],
                         timeout=30)


# --------------------------------------------------------------------------- RabbitMQ


@dataclass(frozen=True)
class RabbitNode:
    name: str  # Erlang node name, for rabbitmqctl -n
    host: str
    port: int
    base: Path  # data, logs, config

    @classmethod
    def of(cls, host: str, port: int, run_dir: Path) -> RabbitNode:
        return cls(f"phoenix95-{port}@localhost", host, port, run_dir / f"rabbitmq-{port}")

    def env(self) -> dict[str, str]:
        return {
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.port + 1),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.base / "rabbitmq.pid"),
        }


def ctl(node: str | None, *args: str, stdin: str | None = None,
        timeout: float = 60.0) -> tuple[int, str]:
    """``rabbitmqctl [-n node] args``: the stack's private node, or the machine's."""
    return lib.run_quiet(["rabbitmqctl", *(["-n", node] if node else []), *args],
                         timeout=timeout, stdin=stdin)


def _give_to_rabbit_user(path: Path) -> None:
    """As root, the Debian wrapper drops to the rabbitmq user: it must own the node's files."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    try:
        user = pwd.getpwnam(RABBIT_USER)
    except KeyError:
        return
    for p in [path, *path.rglob("*")]:
        os.chown(p, user.pw_uid, user.pw_gid)


def start_rabbit(node: RabbitNode, wait: float = 90.0) -> None:
    for sub in ("mnesia", "log"):
        (node.base / sub).mkdir(parents=True, exist_ok=True)
    (node.base / "rabbitmq.conf").write_text(
        f"listeners.tcp.local = 127.0.0.1:{node.port}\n", encoding="utf-8")
    (node.base / "enabled_plugins").write_text("[].\n", encoding="utf-8")
    _give_to_rabbit_user(node.base)
    env = {**os.environ, **node.env()}
    proc = subprocess.run(["rabbitmq-server", "-detached"], env=env, capture_output=True,
                          text=True, timeout=wait, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"rabbitmq-server -detached ({node.name}) failed "
                           f"({proc.returncode}): {(proc.stdout + proc.stderr).strip()}")
    deadline = time.monotonic() + wait
    while ctl(node.name, "-q", "await_startup", timeout=wait)[0] != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"rabbitmq node {node.name} did not start within {wait:.0f}s; "
                               f"log in {node.base / 'log'}")
        time.sleep(1.0)


def stop_rabbit(node: str | None) -> tuple[int, str]:
    return ctl(node, "stop")


# --------------------------------------------------------------------------- markers


def record(run_dir: Path, broker: str, host: str, port: int, node: str | None = None) -> None:
    data: dict[str, object] = {"host": host, "port": port, "at": time.time()}
    if node:
        data["node"] = node
    path = marker(run_dir, broker)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def started(run_dir: Path, broker: str) -> dict[str, object] | None:
    """What ``up`` recorded when it started this stack's ``broker``; None if it did not."""
    path = marker(run_dir, broker)
    if not path.exists():
        return None
    data: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
    return data


def rabbit_node(run_dir: Path) -> str | None:
    """The private RabbitMQ node of the stack in ``run_dir`` (None: the machine's node)."""
    data = started(run_dir, "rabbitmq")
    node = data.get("node") if data else None
    return str(node) if node else None


def start_private(broker: str, host: str, port: int, run_dir: Path) -> str:
    """Start the stack's own ``broker`` and record it for ``down``; returns what started."""
    if broker == "redis":
        start_redis(host, port, run_dir)
        record(run_dir, broker, host, port)
        return f"private server (files in {redis_dir(run_dir, port)})"
    node = RabbitNode.of(host, port, run_dir)
    start_rabbit(node)
    record(run_dir, broker, host, port, node.name)
    if not lib.wait_tcp(host, port, 60):
        raise RuntimeError(f"node {node.name} started but {host}:{port} did not open")
    return f"private node {node.name} (files in {node.base})"
