"""The HA lab's configuration files, rendered from the settings: nginx, Prometheus,
Alertmanager, the RabbitMQ nodes, Redis and Sentinel (``scripts/lab.py`` writes them into the
lab's run folder on every ``scripts/up --ha``).

nginx, Prometheus and Alertmanager keep the shape of the shipped compose files
(compose/nginx/nginx.conf, compose/prometheus/prometheus.yml,
compose/alertmanager/alertmanager.yml) with the lab's loopback addresses; Prometheus loads the
ONE rules file of every deployment, k8s/monitoring/alerts.yml.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scripts import lib

RULES = lib.ROOT / "k8s" / "monitoring" / "alerts.yml"
SHIPPED_ALERTMANAGER = lib.ROOT / "compose" / "alertmanager" / "alertmanager.yml"
SHIPPED_NOTIFY_URL = "http://notify:8103/"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class RabbitNode:
    name: str  # short node name: lab-1 -> lab-1@localhost
    port: int  # AMQP
    dist_port: int  # Erlang distribution (clustering, rabbitmqctl)

    @property
    def node(self) -> str:
        return f"{self.name}@localhost"


# --------------------------------------------------------------------------- nginx


def nginx_conf(prefix: Path, port: int, upstreams: Mapping[str, Sequence[int]],
               rate_per_minute: int) -> str:
    """The shipped gateway (port 8080 server) and /webhook location, on loopback ports.

    /webhook and /notify/alertmanager are retried on the other instance after a connect
    error, a timeout, a 502 or a 503 even though they are POSTs (``non_idempotent``): a
    webhook carries its alert id and brain answers a repeated id as a duplicate, and notify
    deduplicates Alertmanager's alerts by fingerprint, so a second delivery is harmless.
    ``max_fails=0``: an instance is never marked unavailable. A refused connection on
    loopback costs nothing to retry, while marking instances down turned the 503s both brains
    answer during a Redis failover into nginx's own 502 "no live upstreams" (measured).
    """
    temp = "\n".join(f"    {kind}_temp_path {prefix / 'tmp' / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    blocks = []
    for service, ports in upstreams.items():
        servers = "\n".join(f"        server {LOOPBACK}:{p} max_fails=0;"
                            for p in ports)
        blocks.append(f"    upstream {service} {{\n{servers}\n        keepalive 16;\n    }}")
    gateway = "\n".join(
        f"        location /{s}/ {{\n            proxy_pass http://{s}/;\n        }}"
        for s in upstreams)
    return f"""# written by scripts/up --ha from the settings; compose/nginx/nginx.conf is its model
worker_processes 1;
pid {prefix / 'nginx.pid'};
error_log stderr warn;

events {{
    worker_connections 1024;
}}

http {{
    default_type application/octet-stream;
    log_format phoenix95 '$remote_addr - [$time_local] "$request" $status $body_bytes_sent '
                         'rt=$request_time urt=$upstream_response_time '
                         'upstream=$upstream_addr';
    access_log {prefix / 'access.log'} phoenix95;
{temp}
    keepalive_timeout 65s;
    server_tokens off;

    limit_req_zone $binary_remote_addr zone=webhook:10m rate={rate_per_minute}r/m;

{chr(10).join(blocks)}

    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_set_header X-Real-IP $remote_addr;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_connect_timeout 2s;
    proxy_send_timeout 30s;
    proxy_read_timeout 30s;
    proxy_next_upstream error timeout http_502 http_503 http_504;
    proxy_next_upstream_tries 3;

    server {{
        listen {LOOPBACK}:{port};
        server_name _;
        client_max_body_size 64k;

        location = /webhook {{
            limit_except POST {{
                deny all;
            }}
            client_max_body_size 8k;
            client_body_buffer_size 8k;
            limit_req zone=webhook burst={max(60, rate_per_minute // 2)} nodelay;
            limit_req_status 429;
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_pass http://brain;
        }}

        location = /notify/alertmanager {{
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_pass http://notify/alertmanager;
        }}

{gateway}

        # account figures stay off the gateway: Prometheus scrapes the instances directly
        location ~ ^/(brain|risk|execute|notify)/(metrics|dashboard)$ {{
            return 404;
        }}

        location = /nginx-health {{
            access_log off;
            default_type text/plain;
            return 200 "ok\\n";
        }}
    }}
}}
"""


# --------------------------------------------------------------------------- monitoring


def prometheus_conf(targets: Mapping[str, Sequence[str]], alertmanager: str,
                    interval_s: int = 5) -> str:
    """Static targets (one per instance) instead of the compose file's DNS discovery."""
    scrape: list[dict[str, Any]] = [
        {"job_name": job, "metrics_path": "/metrics",
         "static_configs": [{"targets": list(hosts)}]}
        for job, hosts in targets.items()
    ]
    config = {
        "global": {"scrape_interval": f"{interval_s}s", "evaluation_interval": f"{interval_s}s",
                   "external_labels": {"system": "phoenix95-lab"}},
        "rule_files": [str(RULES)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": scrape,
    }
    return "# written by scripts/up --ha\n" + yaml.safe_dump(config, sort_keys=False)


def alertmanager_conf(notify_url: str, key_file: Path,
                      shipped: Path = SHIPPED_ALERTMANAGER) -> str:
    """The shipped receiver file, pointed at ``notify_url`` (nginx's /notify/, which
    balances over the notify instances) with the Bearer key read from ``key_file``."""
    config = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = notify_url.rstrip("/") + "/" + hook["url"].removeprefix(
                SHIPPED_NOTIFY_URL)
            hook["http_config"]["authorization"]["credentials_file"] = str(key_file)
    return "# written by scripts/up --ha from " + \
        f"{shipped.relative_to(lib.ROOT)}\n" + yaml.safe_dump(config, sort_keys=False)


# --------------------------------------------------------------------------- RabbitMQ


def rabbit_conf(node: RabbitNode) -> str:
    """rabbitmq.conf of one lab node. pause_minority: a node cut off from the other two
    stops serving instead of diverging (the setting for a cluster of three)."""
    return "\n".join([
        "# written by scripts/up --ha",
        f"listeners.tcp.default = {LOOPBACK}:{node.port}",
        "cluster_partition_handling = pause_minority",
        "loopback_users = none",
        "log.console = true",
        "log.console.level = warning",
        "log.file = false",
        "",
    ])


def rabbit_env(node: RabbitNode, base: Path, home: str) -> dict[str, str]:
    """Environment of ``rabbitmq-server`` for one node: its name, ports, own folders."""
    folder = base / node.name
    return {
        "RABBITMQ_NODENAME": node.node,
        "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
        "RABBITMQ_NODE_PORT": str(node.port),
        "RABBITMQ_DIST_PORT": str(node.dist_port),
        "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
        "RABBITMQ_LOG_BASE": str(folder / "log"),
        "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        "RABBITMQ_PID_FILE": str(folder / "rabbitmq.pid"),
        "ERL_EPMD_ADDRESS": LOOPBACK,
        "HOME": home,  # $HOME/.erlang.cookie: the cookie every lab node and rabbitmqctl share
    }


# --------------------------------------------------------------------------- Redis


def redis_conf(port: int, folder: Path) -> str:
    """A lab Redis: append-only file fsynced every second, so a node restarted by supervisord
    reloads its data instead of coming back empty (an empty master would wipe its replica)."""
    return "\n".join([
        "# written by scripts/up --ha",
        f"port {port}", f"bind {LOOPBACK}", f"dir {folder}", "daemonize no",
        "save \"\"", "appendonly yes", "appendfsync everysec",
        "replica-serve-stale-data yes", "",
    ])


def sentinel_conf(port: int, master: str, master_port: int, folder: Path, quorum: int,
                  down_after_ms: int, failover_timeout_ms: int) -> str:
    """One Sentinel; it rewrites this file itself as it learns the topology."""
    return "\n".join([
        "# written by scripts/up --ha; Sentinel rewrites it",
        f"port {port}", f"bind {LOOPBACK}", f"dir {folder}", "daemonize no",
        f"sentinel monitor {master} {LOOPBACK} {master_port} {quorum}",
        f"sentinel down-after-milliseconds {master} {down_after_ms}",
        f"sentinel failover-timeout {master} {failover_timeout_ms}",
        f"sentinel parallel-syncs {master} 1",
        "",
    ])
