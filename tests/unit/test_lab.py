"""The HA lab (scripts/up --ha): its settings, programs and generated configuration files.

The generated nginx, Prometheus and Alertmanager files are checked by the real tools
(``nginx -t``, ``promtool check config``, ``amtool check-config``) when installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts import lab, lab_conf, lab_redis
from scripts import status as status_script
from shared.settings import Settings, load_settings


def need(tool: str) -> str:
    found = shutil.which(tool)
    if found:
        return found
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"{tool} is not installed (sh compose/validators.sh)")
    pytest.skip(f"{tool} is not installed")


@pytest.fixture
def lab_settings(secrets_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in lab.lab_env().items():
        if key != "PHOENIX_DOTENV":  # the test secrets, not the lab's .env
            monkeypatch.setenv(key, value)
    return load_settings()


def test_lab_settings_reach_the_cluster_sentinel_and_own_vhost(lab_settings: Settings) -> None:
    mq = lab_settings.message_queue
    assert mq.nodes() == (("127.0.0.1", 5681), ("127.0.0.1", 5682), ("127.0.0.1", 5683))
    assert mq.amqp_uri.count(";") == 2 and mq.amqp_uri.split(";")[1].startswith("amqp://")
    assert mq.amqp_uri.split(";")[2].endswith("@127.0.0.1:5683/%2Ftrading_lab")
    assert mq.queue_type == "quorum"
    redis_settings = lab_settings.redis_streams
    assert redis_settings.sentinels == ("127.0.0.1:26379", "127.0.0.1:26380", "127.0.0.1:26381")
    assert lab_settings.security.trusted_proxies == ("127.0.0.1",)
    assert lab_settings.services.run_path().name == ".run-ha"


def test_apply_env_never_overrides_what_the_operator_set(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # every key apply_env may set is registered with monkeypatch, so the lab's settings
    # (AMQP port 5681, Sentinels ...) do not leak into the tests that run after this one
    for key in lab.lab_env():
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PHOENIX__MESSAGE_QUEUE__VIRTUAL_HOST", "/mine")

    lab.apply_env()

    assert os.environ["PHOENIX__MESSAGE_QUEUE__VIRTUAL_HOST"] == "/mine"
    assert os.environ["PHOENIX__SERVICES__RUN_DIR"] == ".run-ha"


def test_two_instances_of_each_service_on_their_own_ports(lab_settings: Settings,
                                                          tmp_path: Path) -> None:
    specs = {s.name: s for s in lab.all_specs(tmp_path, lab_settings, dashboard=False)}

    for service, port in (("brain", 8100), ("risk", 8101), ("execute", 8102), ("notify", 8103)):
        first, second = specs[service], specs[f"{service}-2"]
        assert first.argv == second.argv
        assert first.health_url == f"http://127.0.0.1:{port}/health"
        assert second.health_url == f"http://127.0.0.1:{port + 100}/health"
        assert second.env[f"PHOENIX__SERVICES__{service.upper()}_PORT"] == str(port + 100)
        # instance 2 starts on lab-2: one node's death never cuts both instances at once
        assert json.loads(second.env["PHOENIX__MESSAGE_QUEUE__HOSTS"])[0] == "127.0.0.1:5682"
    assert "feed" in specs and "feed-2" not in specs
    assert {"rabbit-lab-1", "rabbit-lab-2", "rabbit-lab-3", "redis-6380", "redis-6381",
            "sentinel-26379", "sentinel-26380", "sentinel-26381", "nginx", "prometheus",
            "alertmanager"} <= set(specs)
    env = specs["rabbit-lab-2"].env
    assert env["RABBITMQ_NODENAME"] == "lab-2@localhost"
    assert (env["RABBITMQ_NODE_PORT"], env["RABBITMQ_DIST_PORT"]) == ("5682", "25682")
    assert env["RABBITMQ_MNESIA_BASE"].startswith(str(tmp_path / "rabbitmq" / "lab-2"))


def test_the_ready_check_of_a_second_instance_is_probed() -> None:
    assert status_script.ready_url_of("brain-2", "http://127.0.0.1:8200/health") == \
        "http://127.0.0.1:8200/ready"
    assert status_script.ready_url_of("nginx", "http://127.0.0.1:8080/nginx-health") is None


def _configs(lab_settings: Settings, tmp_path: Path) -> Path:
    lab.write_configs(tmp_path, lab_settings, fresh=True)
    return tmp_path


def test_nginx_balances_and_retries_webhooks_over_both_brains(lab_settings: Settings,
                                                               tmp_path: Path) -> None:
    text = (_configs(lab_settings, tmp_path) / "nginx" / "nginx.conf").read_text()

    brain = re.search(r"upstream brain \{(.*?)\}", text, re.S)
    assert brain and "127.0.0.1:8100" in brain.group(1) and "127.0.0.1:8200" in brain.group(1)
    webhook = re.search(r"location = /webhook \{(.*?)\n        \}", text, re.S)
    assert webhook
    assert "proxy_next_upstream error timeout http_502 http_503 non_idempotent;" in \
        webhook.group(1)
    assert "proxy_pass http://brain;" in webhook.group(1)
    assert "listen 127.0.0.1:8080;" in text
    assert "rate=6000r/m" in text  # the lab's security.rate_limit_per_minute


def test_nginx_accepts_the_generated_config(lab_settings: Settings, tmp_path: Path) -> None:
    nginx = need("nginx")
    conf = _configs(lab_settings, tmp_path) / "nginx" / "nginx.conf"
    result = subprocess.run([nginx, "-t", "-q", "-c", str(conf), "-p", f"{tmp_path}/nginx/"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_prometheus_scrapes_every_instance_with_the_shared_rules(lab_settings: Settings,
                                                                 tmp_path: Path) -> None:
    path = _configs(lab_settings, tmp_path) / "prometheus" / "prometheus.yml"
    config: dict[str, Any] = yaml.safe_load(path.read_text())

    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
    assert jobs["phoenix95-brain"] == ["127.0.0.1:8100", "127.0.0.1:8200"]
    assert jobs["phoenix95-notify"] == ["127.0.0.1:8103", "127.0.0.1:8203"]
    assert jobs["phoenix95-feed"] == ["127.0.0.1:8104"]
    assert jobs["paper-exchange"] == ["127.0.0.1:8110"]
    assert config["rule_files"] == [str(lab_conf.RULES)]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == \
        ["127.0.0.1:9093"]
    result = subprocess.run([need("promtool"), "check", "config", str(path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_posts_to_notify_through_nginx_with_a_key_file(
        lab_settings: Settings, tmp_path: Path) -> None:
    folder = _configs(lab_settings, tmp_path) / "alertmanager"
    config = yaml.safe_load((folder / "alertmanager.yml").read_text())

    hooks = [h for r in config["receivers"] for h in r.get("webhook_configs", [])]
    assert len(hooks) == 2
    for hook in hooks:
        assert hook["url"] == "http://127.0.0.1:8080/notify/alertmanager"
        assert hook["http_config"]["authorization"]["credentials_file"] == \
            str(folder / "api_key")
    assert (folder / "api_key").read_text().strip() in \
        lab_settings.security.api_key_values()
    assert (folder / "api_key").stat().st_mode & 0o077 == 0
    result = subprocess.run([need("amtool"), "check-config", str(folder / "alertmanager.yml")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sentinels_watch_the_master_with_a_quorum_of_two(lab_settings: Settings,
                                                         tmp_path: Path) -> None:
    folder = _configs(lab_settings, tmp_path)
    text = (folder / "sentinel" / "26380" / "sentinel.conf").read_text()
    assert "sentinel monitor phoenix95 127.0.0.1 6380 2" in text
    assert "port 26380" in text
    assert "appendonly yes" in (folder / "redis" / "6381" / "redis.conf").read_text()


@pytest.mark.parametrize(("master", "restarted", "initial", "expected"), [
    (None, False, None, []),  # first start, no Sentinel yet: the configured master
    (None, False, 6380, ["--replicaof", "127.0.0.1", "6380"]),  # the configured replica
    (("127.0.0.1", 6381), True, None, ["--replicaof", "127.0.0.1", "6381"]),  # failed over
    (("127.0.0.1", 6380), False, None, []),  # Sentinel names it: it is the master
])
def test_a_lab_redis_starts_in_the_role_sentinel_gives_it(
        monkeypatch: pytest.MonkeyPatch, master: tuple[str, int] | None, restarted: bool,
        initial: int | None, expected: list[str]) -> None:
    monkeypatch.setattr(lab_redis, "sentinel_master", lambda sentinels, name: master)

    assert lab_redis.role_args(6380, [26379], "phoenix95", initial, restarted) == expected


def test_a_restarted_master_waits_for_the_failover_then_replicates(
        monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([("127.0.0.1", 6380), ("127.0.0.1", 6380), ("127.0.0.1", 6381)])
    monkeypatch.setattr(lab_redis, "sentinel_master", lambda sentinels, name: next(answers))
    monkeypatch.setattr(lab_redis.time, "sleep", lambda s: None)

    assert lab_redis.role_args(6380, [26379], "phoenix95", None, True) == \
        ["--replicaof", "127.0.0.1", "6381"]
