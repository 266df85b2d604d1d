"""The faults of ``scripts/chaos``: real actions on the running stack, never mocks.

Each fault is a callable that blocks until the fault is over (the process is back, the
broker answers again, the exchange fault has expired) and returns the monotonic time it
ended: the "fault end" the invariants count their 10 s of protection from.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts import infra, lib, local_brokers, supervise
from shared import names
from shared.settings import Settings

SERVICES = ("brain", "risk", "execute", "notify", "feed")
EXCHANGE_ERRORS = ["500", "503", "timeout", "429", "-1001"]
BACK_TIMEOUT_S = 90.0
# the command this machine's Redis was started with (/work/.library/env/machines/python-svc.md)
REDIS_START = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port",
               "6379", "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
               "--logfile", "/var/log/redis/ci.log"]


class ChaosError(RuntimeError):
    """A fault could not be injected or the stack did not come back."""


@dataclass(frozen=True)
class Stack:
    settings: Settings
    run_dir: Path
    paper_url: str  # the exchange's origin (exchange.rest_url in live mode)

    @property
    def api_key(self) -> str:
        return self.settings.exchange.api_key.get_secret_value()

    def paper(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.paper_url + path, data=data, method=method,
                                     headers={"X-MBX-APIKEY": self.api_key,
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def healthy(self, service: str) -> bool:
        return lib.http_ok(self.settings.services.url_of(service) + "/health")[0]

    @property
    def rabbit_node(self) -> str | None:
        """The stack's private RabbitMQ node (None: it uses the machine's)."""
        return local_brokers.rabbit_node(self.run_dir)

    @property
    def private_redis(self) -> tuple[str, int] | None:
        """Host and port of the stack's private Redis (None: it uses the machine's)."""
        data = local_brokers.started(self.run_dir, "redis")
        return (str(data["host"]), int(str(data["port"]))) if data else None

    def shared_brokers(self, scenarios: list[str]) -> list[str]:
        """The broker restarts among ``scenarios`` that would hit a broker this stack shares
        with the rest of the machine (up did not start a private one for it)."""
        private = {"rabbit-restart": self.rabbit_node is not None,
                   "redis-restart": self.private_redis is not None}
        return [s for s in scenarios if s in private and not private[s]]


Fault = Callable[[Stack, random.Random, float], float]  # (stack, rng, size) -> fault end


def wait_until(probe: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise ChaosError(f"{what} not within {timeout:.0f}s")
        time.sleep(0.2)


def kill_service(name: str) -> Fault:
    """kill -9 of the program's pid (from supervisord); supervisord starts it again."""

    def fault(stack: Stack, rng: random.Random, size: float) -> float:
        info = supervise.programs(stack.run_dir).get(name)
        if info is None or not info.pid:
            raise ChaosError(f"{name} is not running under supervisord")
        os.kill(info.pid, signal.SIGKILL)

        def back() -> bool:
            now = supervise.programs(stack.run_dir)[name]
            return now.state == "RUNNING" and now.pid not in (0, info.pid) and \
                stack.healthy(name)

        wait_until(back, BACK_TIMEOUT_S, f"{name} healthy again after kill -9")
        return time.monotonic()

    return fault


def exchange_faults(stack: Stack, rng: random.Random, size: float,
                    errors: list[str] | None = None) -> float:
    seconds = 20.0 * size
    stack.paper("POST", "/paper/faults", {"error_rate": 0.3, "errors": errors or EXCHANGE_ERRORS,
                                          "seconds": seconds})
    # a request already held by a "timeout" fault is answered (dropped) after the client's
    # timeout: the fault is over once that has passed too
    time.sleep(seconds + stack.settings.exchange.timeout_ms / 1000.0 + 1.0)
    stack.paper("DELETE", "/paper/faults")
    return time.monotonic()


def _ctl(stack: Stack, *args: str) -> str:
    """rabbitmqctl on the stack's own node (its private one, else the machine's)."""
    code, out = local_brokers.ctl(stack.rabbit_node, *args)
    if code != 0:
        raise ChaosError(f"rabbitmqctl {' '.join(args)}: {out.strip()[:300]}")
    return out


def _all_healthy(stack: Stack) -> bool:
    return all(stack.healthy(s) for s in SERVICES)


def rabbit_connections(stack: Stack, rng: random.Random, size: float) -> float:
    """Close every AMQP connection of this stack's vhost (others' vhosts are untouched)."""
    _ctl(stack, "close_all_connections", "-p", stack.settings.message_queue.virtual_host, "chaos")
    time.sleep(2.0)
    wait_until(lambda: _all_healthy(stack), BACK_TIMEOUT_S, "services healthy")
    return time.monotonic()


def rabbit_app_restart(stack: Stack, rng: random.Random, size: float) -> float:
    """stop_app, 5 s, start_app of the stack's private node (of the machine's node, for
    everyone on it, when the stack has none: only with --destructive)."""
    _ctl(stack, "stop_app")
    try:
        time.sleep(5.0 * size)
    finally:
        _ctl(stack, "start_app")
    wait_until(lambda: _all_healthy(stack), BACK_TIMEOUT_S, "services healthy")
    return time.monotonic()


def redis_restart(stack: Stack, rng: random.Random, size: float) -> float:
    """Shut down the stack's private Redis without saving and start it again with the same
    command (the machine's Redis, for everyone, when the stack has none: --destructive)."""
    private = stack.private_redis
    if private:
        host, port = private
        local_brokers.stop_redis(host, port)
        wait_until(lambda: not lib.tcp_open(host, port), 30, "redis stopped")
        local_brokers.start_redis(host, port, stack.run_dir)
    else:
        subprocess.run(["redis-cli", "shutdown", "nosave"], capture_output=True, timeout=30,
                       check=False)
        time.sleep(1.0)
        subprocess.run(REDIS_START, capture_output=True, timeout=30, check=False)
    wait_until(lambda: infra.redis_reachable(stack.settings)[0], 60, "redis answering")
    # consumer groups live in Redis: a restart without persistence loses them
    infra.create_consumer_groups(stack.settings.redis_streams)
    wait_until(lambda: _all_healthy(stack), BACK_TIMEOUT_S, "services healthy")
    return time.monotonic()


def kafka_down(stack: Stack, rng: random.Random, size: float) -> float:
    """Stop the stack's own Tansu for 30 s (x size), start it and recreate its topics."""
    rpc = supervise.client(stack.run_dir).supervisor
    rpc.stopProcess(infra.KAFKA_PROC, True)
    try:
        time.sleep(30.0 * size)
    finally:
        rpc.startProcess(infra.KAFKA_PROC, True)
    infra.create_topics(stack.settings.kafka.bootstrap_servers, names.TOPIC_PARTITIONS, 60)
    return time.monotonic()


SCENARIOS: dict[str, Fault] = {
    **{f"kill-{s}": kill_service(s) for s in SERVICES},
    "exchange-faults": exchange_faults,
    # beyond the list: orders placed whose answers are lost ("status unknown")
    "exchange-lost-answers": lambda stack, rng, size: exchange_faults(
        stack, rng, size, ["timeout-processed"]),
    "rabbit-connections": rabbit_connections,
    "kafka-down": kafka_down,
    "rabbit-restart": rabbit_app_restart,
    "redis-restart": redis_restart,
}
# broker restarts: run on a stack's private broker; on the machine's only with --destructive
DESTRUCTIVE = frozenset({"rabbit-restart", "redis-restart"})
EXTRA = frozenset({"exchange-lost-answers"})  # run only when named


def paper_reachable(stack: Stack) -> bool:
    try:
        stack.paper("GET", "/paper/faults")
        return True
    except (OSError, urllib.error.URLError, ValueError):
        return False
