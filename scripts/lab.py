"""The HA lab on one machine: ``scripts/up --ha`` (``scripts/status --ha``, ``scripts/down --ha``).

Under the lab's own supervisord (run folder ``.run-ha``), everything is a supervised program:

* a 3-node RabbitMQ cluster (``lab-1/2/3@localhost`` on AMQP 5681-5683, distribution
  25681-25683, a folder each); the vhost ``/trading_lab`` is created with quorum queues as
  its default type, so every durable queue (ours and nameko's RPC/event queues) is a quorum
  queue replicated on the three nodes;
* Redis: a master (6380), a replica (6381) and three Sentinels (26379-26381, quorum 2);
  every client reaches the master through Sentinel (shared/redis_conn.py);
* Kafka (Tansu) on 9192, the paper exchange, the feed and the dashboard once;
* two instances of brain, risk, execute and notify (ports 81xx and 82xx), competing
  consumers on every queue;
* nginx on 127.0.0.1:8080 balancing /webhook over the brains (retrying the other one),
  Prometheus on 9090 scraping every instance with k8s/monitoring/alerts.yml, Alertmanager
  on 9093 routing to notify's /alertmanager through nginx.

The lab's settings are environment defaults (``lab_env``) that a variable already set wins
over; ``apply_env`` puts them in ``os.environ`` before the settings are read.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from scripts import infra, lib, supervise
from scripts.lab_conf import (
    LOOPBACK,
    RabbitNode,
    alertmanager_conf,
    nginx_conf,
    prometheus_conf,
    rabbit_conf,
    rabbit_env,
    redis_conf,
    sentinel_conf,
)
from shared import names
from shared.settings import RedisStreamsSettings, Settings

RUN_DIR = ".run-ha"
RABBIT_NODES = tuple(RabbitNode(f"lab-{i}", 5680 + i, 25680 + i) for i in (1, 2, 3))
REDIS_MASTER, REDIS_REPLICA = 6380, 6381
SENTINELS = (26379, 26380, 26381)
SENTINEL_QUORUM = 2
SENTINEL_DOWN_AFTER_MS = 1500
SENTINEL_FAILOVER_TIMEOUT_MS = 10000
MASTER_NAME = "phoenix95"
KAFKA_PORT = 9192
NGINX_PORT = 8080
INSTANCE_OFFSET = 100  # instance 2 of a service listens on its port + 100 (8200-8203)
VHOST = "/trading_lab"
RABBIT_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
NGINX, PROMETHEUS, ALERTMANAGER = "nginx", "prometheus", "alertmanager"
REPLICATED = (names.BRAIN, names.RISK, names.EXECUTE, names.NOTIFY)
INFRA_TIMEOUT = 120.0


def rotated_nodes(shift: int) -> list[str]:
    nodes = [f"{LOOPBACK}:{n.port}" for n in RABBIT_NODES]
    return nodes[shift:] + nodes[:shift]


def lab_env() -> dict[str, str]:
    """The lab's settings as ``PHOENIX__...`` variables (see docs/deployment.md)."""
    return {
        "PHOENIX__SERVICES__RUN_DIR": RUN_DIR,
        "PHOENIX_DOTENV": f"{RUN_DIR}/.env",
        "PHOENIX__SERVICES__BRAIN_PROCESSES": "1",
        "PHOENIX__MESSAGE_QUEUE__HOST": LOOPBACK,
        "PHOENIX__MESSAGE_QUEUE__PORT": str(RABBIT_NODES[0].port),
        "PHOENIX__MESSAGE_QUEUE__HOSTS": json.dumps(rotated_nodes(0)),
        "PHOENIX__MESSAGE_QUEUE__VIRTUAL_HOST": VHOST,
        "PHOENIX__MESSAGE_QUEUE__USERNAME": "phoenix95_lab",
        "PHOENIX__MESSAGE_QUEUE__QUEUE_TYPE": "quorum",
        "PHOENIX__REDIS_STREAMS__URL": f"redis://{LOOPBACK}:{REDIS_MASTER}/0",
        "PHOENIX__REDIS_STREAMS__SENTINELS": json.dumps([f"{LOOPBACK}:{p}" for p in SENTINELS]),
        "PHOENIX__REDIS_STREAMS__SENTINEL_MASTER": MASTER_NAME,
        "PHOENIX__KAFKA__BOOTSTRAP_SERVERS": f"{LOOPBACK}:{KAFKA_PORT}",
        "PHOENIX__DATABASE__URL": f"sqlite:///{RUN_DIR}/phoenix95.db",
        "PHOENIX__PAPER_EXCHANGE__STATE_PATH": f"{RUN_DIR}/paper_exchange.db",
        # the brains see nginx as the peer: the client is its X-Forwarded-For
        "PHOENIX__SECURITY__TRUSTED_PROXIES": json.dumps([LOOPBACK]),
        # benchmarks/failover.py sends 20 alerts/s from one client (the default is 120/min)
        "PHOENIX__SECURITY__RATE_LIMIT_PER_MINUTE": "6000",
        # and thousands of them are refused: "normal" would queue each for Telegram
        "PHOENIX__TELEGRAM__VERBOSITY": "quiet",
    }


def apply_env() -> None:
    for key, value in lab_env().items():
        os.environ.setdefault(key, value)


def instance_port(settings: Settings, service: str, instance: int) -> int:
    return settings.services.port_of(service) + INSTANCE_OFFSET * (instance - 1)


def instance_name(service: str, instance: int) -> str:
    return service if instance == 1 else f"{service}-{instance}"


# --------------------------------------------------------------------------- programs


def rabbit_home() -> str:
    """The HOME whose .erlang.cookie ``rabbitmqctl`` uses: Debian's wrapper runs it as the
    rabbitmq user when called as root, so the lab nodes must share that cookie."""
    system = Path("/var/lib/rabbitmq")
    if hasattr(os, "geteuid") and os.geteuid() == 0 and (system / ".erlang.cookie").exists():
        return str(system)
    return os.environ.get("HOME", str(Path.home()))


def infra_specs(run_dir: Path) -> list[lib.ProcSpec]:
    py = sys.executable
    base = run_dir / "rabbitmq"
    home = rabbit_home()
    specs = [lib.ProcSpec(f"rabbit-{n.name}", (RABBIT_SERVER,), priority=2,
                          env=rabbit_env(n, base, home)) for n in RABBIT_NODES]
    sentinels = ",".join(map(str, SENTINELS))
    for port in (REDIS_MASTER, REDIS_REPLICA):
        initial = ("--initial-master", str(REDIS_MASTER)) if port != REDIS_MASTER else ()
        specs.append(lib.ProcSpec(
            f"redis-{port}", (py, "-m", "scripts.lab_redis",
                              str(run_dir / "redis" / str(port) / "redis.conf"), str(port),
                              "--sentinels", sentinels, "--master-name", MASTER_NAME,
                              *initial), priority=3))
    for port in SENTINELS:
        specs.append(lib.ProcSpec(
            f"sentinel-{port}", ("redis-server", str(run_dir / "sentinel" / str(port) /
                                                     "sentinel.conf"), "--sentinel"),
            priority=4))
    return specs


def service_specs(settings: Settings, dashboard: bool) -> list[lib.ProcSpec]:
    """up's programs (instance 1 of each service) plus instance 2 of each replicated one."""
    from scripts.up import process_specs

    py = sys.executable
    specs = process_specs(settings, dashboard=dashboard)
    for service in REPLICATED:
        port = instance_port(settings, service, 2)
        specs.append(lib.ProcSpec(
            instance_name(service, 2), (py, "-m", "nameko_services.runner", service),
            f"http://{settings.services.host_of(service)}:{port}/health", priority=30,
            env={f"PHOENIX__SERVICES__{service.upper()}_PORT": str(port),
                 # instance 2 connects to lab-2 first: one node's death never takes the
                 # broker connections of both instances at once
                 "PHOENIX__MESSAGE_QUEUE__HOSTS": json.dumps(rotated_nodes(1))}))
    return specs


def edge_specs(run_dir: Path, settings: Settings) -> list[lib.ProcSpec]:
    ha = settings.high_availability
    nginx_dir = run_dir / "nginx"
    return [
        lib.ProcSpec(NGINX, ("nginx", "-p", str(nginx_dir), "-c", str(nginx_dir / "nginx.conf"),
                             "-g", "daemon off;"),
                     f"http://{LOOPBACK}:{NGINX_PORT}/nginx-health", priority=50),
        lib.ProcSpec(PROMETHEUS, (
            "prometheus", f"--config.file={run_dir / 'prometheus' / 'prometheus.yml'}",
            f"--storage.tsdb.path={run_dir / 'prometheus' / 'data'}",
            "--storage.tsdb.retention.time=2d",
            f"--web.listen-address={LOOPBACK}:{ha.prometheus_port}"),
            f"http://{LOOPBACK}:{ha.prometheus_port}/-/ready", priority=50),
        lib.ProcSpec(ALERTMANAGER, (
            shutil.which("prometheus-alertmanager") or "alertmanager",
            f"--config.file={run_dir / 'alertmanager' / 'alertmanager.yml'}",
            f"--storage.path={run_dir / 'alertmanager' / 'data'}",
            f"--web.listen-address={LOOPBACK}:{ha.alertmanager_port}",
            "--cluster.listen-address="),
            f"http://{LOOPBACK}:{ha.alertmanager_port}/-/ready", priority=50),
    ]


# --------------------------------------------------------------------------- config files


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def write_configs(run_dir: Path, settings: Settings, fresh: bool) -> None:
    """Every config file of the lab. ``fresh`` (supervisord not running): Redis and Sentinel
    start over from the configured roles; their data does not outlive ``down``."""
    base = run_dir / "rabbitmq"
    _write(base / "enabled_plugins", "[].\n")
    _write(base / "rabbitmq-env.conf", "# the lab's nodes take everything from the "
                                       "environment (scripts/lab_conf.py rabbit_env)\n")
    for node in RABBIT_NODES:
        _write(base / node.name / "rabbitmq.conf", rabbit_conf(node))
    if fresh:
        for sub in ("redis", "sentinel"):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
        for port in (REDIS_MASTER, REDIS_REPLICA):
            folder = run_dir / "redis" / str(port)
            _write(folder / "redis.conf", redis_conf(port, folder))
        for port in SENTINELS:
            folder = run_dir / "sentinel" / str(port)
            _write(folder / "sentinel.conf", sentinel_conf(
                port, MASTER_NAME, REDIS_MASTER, folder, SENTINEL_QUORUM,
                SENTINEL_DOWN_AFTER_MS, SENTINEL_FAILOVER_TIMEOUT_MS))
    upstreams = {s: [instance_port(settings, s, i) for i in (1, 2)] for s in REPLICATED}
    nginx_dir = run_dir / "nginx"
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (nginx_dir / "tmp" / kind).mkdir(parents=True, exist_ok=True)
    _write(nginx_dir / "nginx.conf", nginx_conf(
        nginx_dir, NGINX_PORT, upstreams, settings.security.rate_limit_per_minute))
    targets = {f"phoenix95-{s}": [f"{LOOPBACK}:{p}" for p in ports]
               for s, ports in upstreams.items()}
    targets["phoenix95-feed"] = [f"{LOOPBACK}:{settings.services.feed_port}"]
    ha = settings.high_availability
    if settings.exchange.mode == "paper" and not settings.exchange.rest_url:
        targets["paper-exchange"] = [f"{LOOPBACK}:{settings.paper_exchange.port}"]
    targets["prometheus"] = [f"{LOOPBACK}:{ha.prometheus_port}"]
    targets["alertmanager"] = [f"{LOOPBACK}:{ha.alertmanager_port}"]
    _write(run_dir / "prometheus" / "prometheus.yml",
           prometheus_conf(targets, f"{LOOPBACK}:{ha.alertmanager_port}"))
    key_file = run_dir / "alertmanager" / "api_key"
    keys = sorted(settings.security.api_key_values())
    _write(key_file, keys[0] + "\n", mode=0o600)
    _write(run_dir / "alertmanager" / "alertmanager.yml", alertmanager_conf(
        f"http://{LOOPBACK}:{NGINX_PORT}/notify/", key_file))


# --------------------------------------------------------------------------- brokers


def _wait(probe: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise infra.InfraError(f"{what} not within {timeout:.0f}s")
        time.sleep(0.5)


def running_nodes(node: str) -> list[str]:
    code, out = lib.run_quiet(["rabbitmqctl", "-n", node, "-q", "cluster_status",
                               "--formatter", "json"], timeout=30)
    if code != 0:
        return []
    try:
        return [str(n) for n in json.loads(out).get("running_nodes", [])]
    except ValueError:
        return []


def _booted(node: str) -> Callable[[], bool]:
    return lambda: lib.run_quiet(["rabbitmqctl", "-n", node, "-q", "await_startup"],
                                 timeout=60)[0] == 0


def _listening(port: int) -> Callable[[], bool]:
    return lambda: lib.tcp_open(LOOPBACK, port)


def form_cluster(run_dir: Path) -> None:
    """Start the three nodes; lab-2 and lab-3 join lab-1 once (they rejoin by themselves
    after a restart)."""
    supervise.start_programs(run_dir, [f"rabbit-{n.name}" for n in RABBIT_NODES])
    for n in RABBIT_NODES:
        _wait(_booted(n.node), INFRA_TIMEOUT, f"{n.node} booted")
    first = RABBIT_NODES[0].node
    for n in RABBIT_NODES[1:]:
        if n.node in running_nodes(first):
            continue
        for args in (["stop_app"], ["reset"], ["join_cluster", first], ["start_app"]):
            code, out = lib.run_quiet(["rabbitmqctl", "-n", n.node, *args], timeout=120)
            if code != 0:
                raise infra.InfraError(f"rabbitmqctl -n {n.node} {args[0]}: {out.strip()}")
        lib.info(f"rabbitmq: {n.node} joined {first}")
    running = running_nodes(first)
    lib.info(f"rabbitmq: cluster of {len(running)} running nodes: {', '.join(sorted(running))}")


def master_address(settings: Settings) -> tuple[str, int] | None:
    from scripts.lab_redis import sentinel_master

    return sentinel_master(list(SENTINELS), settings.redis_streams.sentinel_master)


def start_redis(run_dir: Path, settings: Settings) -> None:
    supervise.start_programs(run_dir, [f"redis-{REDIS_MASTER}", f"redis-{REDIS_REPLICA}"])
    for port in (REDIS_MASTER, REDIS_REPLICA):
        _wait(_listening(port), INFRA_TIMEOUT, f"redis {port}")
    supervise.start_programs(run_dir, [f"sentinel-{p}" for p in SENTINELS])
    _wait(lambda: master_address(settings) is not None, INFRA_TIMEOUT,
          "Sentinel naming the master")
    lib.info(f"redis: master {master_address(settings)} through Sentinels {SENTINELS}")
    infra.create_consumer_groups(settings.redis_streams)


def start_brokers(run_dir: Path, settings: Settings) -> None:
    form_cluster(run_dir)
    infra.ensure_rabbit_account(settings, node=RABBIT_NODES[0].node)
    infra.declare_topology(settings)
    start_redis(run_dir, settings)
    infra.ensure_kafka(settings, run_dir,
                       start=lambda name: supervise.start_programs(run_dir, [name]))


def all_specs(run_dir: Path, settings: Settings, dashboard: bool) -> list[lib.ProcSpec]:
    kafka = infra.embedded_kafka_spec(settings, run_dir)
    return ([kafka] if kafka else []) + infra_specs(run_dir) + \
        service_specs(settings, dashboard) + edge_specs(run_dir, settings)


def provision_identities(settings: Settings, envs: dict[str, dict[str, str]]) -> None:
    """The per-process RabbitMQ users (cluster-wide, created through lab-1) and Redis ACL
    users on the master AND the replica (Redis does not replicate ACLs: after a failover
    the promoted replica must know them)."""
    from scripts import grants

    grants.apply_rabbit(settings, envs, node=RABBIT_NODES[0].node)
    db = settings.redis_streams.url.rsplit("/", 1)[-1] or "0"
    for port in (REDIS_MASTER, REDIS_REPLICA):
        grants.apply_redis(settings, envs, RedisStreamsSettings(
            url=f"redis://{LOOPBACK}:{port}/{db}"))
    lib.info(f"redis: per-process ACL users on {REDIS_MASTER} and {REDIS_REPLICA}")


def up(settings: Settings, run_dir: Path, dashboard: bool, only_infra: bool,
       wait_healthy: Callable[[Path, Sequence[lib.ProcSpec], float], bool],
       health_timeout: float, env_file: Path | None = None) -> int:
    for binary in ("nginx", "prometheus", "redis-server", "rabbitmq-server"):
        package = {"prometheus": "prometheus", "redis-server": "redis-sentinel",
                   "rabbitmq-server": "rabbitmq-server"}.get(binary, binary)
        if shutil.which(binary) is None and not infra._apt_install(package):
            print(f"error: {binary} is not installed (apt-get install {package})",
                  file=sys.stderr)
            return 1
    if shutil.which("prometheus-alertmanager") is None and shutil.which("alertmanager") is None \
            and not infra._apt_install("prometheus-alertmanager"):
        print("error: alertmanager is not installed", file=sys.stderr)
        return 1
    fresh = not supervise.answering(run_dir)
    write_configs(run_dir, settings, fresh)
    from scripts import provision

    # each process with its own broker user, Redis user and signing keys, as scripts/up
    envs = provision.provision_users(settings, env_file, rabbit=False, redis_acl=False) \
        if env_file is not None else {}
    specs = provision.with_identities(all_specs(run_dir, settings, dashboard), envs)
    lib.section("brokers (HA lab)")
    try:
        lib.info(supervise.start_daemon(run_dir, specs))
        start_brokers(run_dir, settings)
        if envs:
            provision_identities(settings, envs)
    except (infra.InfraError, supervise.SupervisorError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if only_infra:
        return 0
    lib.section("processes (HA lab)")
    from scripts.up import PAPER, prepare_database

    prepare_database(settings)
    services = service_specs(settings, dashboard)
    edges = edge_specs(run_dir, settings)
    stages = [[s for s in services if s.name == PAPER], [s for s in services if s.name != PAPER],
              edges]
    for stage in stages:
        if not stage:
            continue
        for line in supervise.start_programs(run_dir, [s.name for s in stage]):
            lib.info(line)
        if not wait_healthy(run_dir, stage, health_timeout):
            print("error: not every part of the lab became healthy; stop it with "
                  "scripts/down --ha", file=sys.stderr)
            return 1
    summary(settings, run_dir)
    return 0


def summary(settings: Settings, run_dir: Path) -> None:
    ha = settings.high_availability
    lib.section("Phoenix 95 HA lab is up")
    lib.info(f"  webhook (nginx)  http://{LOOPBACK}:{NGINX_PORT}/webhook -> brains "
             f"{[instance_port(settings, names.BRAIN, i) for i in (1, 2)]}")
    lib.info(f"  gateway          http://{LOOPBACK}:{NGINX_PORT}/<service>/...")
    lib.info(f"  prometheus       http://{LOOPBACK}:{ha.prometheus_port}/alerts")
    lib.info(f"  alertmanager     http://{LOOPBACK}:{ha.alertmanager_port}/")
    lib.info(f"  rabbitmq         {', '.join(n.node + ':' + str(n.port) for n in RABBIT_NODES)}"
             f" (vhost {settings.message_queue.virtual_host}, quorum queues)")
    lib.info(f"  redis            master {master_address(settings)}, Sentinels {SENTINELS}")
    lib.info(f"  run dir          {run_dir}")
    lib.info("  status / stop    python scripts/status.py --ha / python scripts/down.py --ha")


def status_rows(settings: Settings, run_dir: Path,
                dashboard: bool) -> list[tuple[str, bool, str]]:
    """Cluster, Sentinel and every lab program (state, restarts, /health, /ready)."""
    from scripts.status import program_rows

    first = RABBIT_NODES[0].node
    running = running_nodes(first) or running_nodes(RABBIT_NODES[1].node)
    rows = [("rabbit cluster", len(running) == len(RABBIT_NODES),
             f"{len(running)}/{len(RABBIT_NODES)} nodes running: {', '.join(sorted(running))}")]
    master = master_address(settings)
    rows.append(("redis sentinel", master is not None, f"master {master}"))
    specs = all_specs(run_dir, settings, dashboard)
    if supervise.answering(run_dir):  # the dashboard only when this lab was started with it
        known = set(supervise.programs(run_dir))
        specs = [s for s in specs if s.name in known or s.name != "dashboard"]
    return rows + program_rows(run_dir, [(s.name, s.health_url) for s in specs])
