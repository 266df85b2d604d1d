"""Readiness and alerting against the running system.

* every service and the feed answer ``GET /ready`` 200 with their checks;
* an alert fires end to end: a real Prometheus (Debian's ``prometheus``) scrapes risk with
  the shipped rules (k8s/monitoring/alerts.yml), a real Alertmanager with the shipped
  receiver (compose/alertmanager/alertmanager.yml, Bearer key from a file) sends it to the
  running notify's ``/alertmanager``, and the system's Telegram worker delivers it to the
  Bot API stand-in. Trading HALTED is the alert: risk exports ``phoenix95_trading_halted``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from shared.settings import Settings
from tests.e2e.test_notify_telegram import Telegram, telegram  # noqa: F401 - the fixture
from tests.support.ports import free_port, installed
from tests.support.trading import wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
CHECKS = {
    "brain": {"amqp", "redis", "market_data"},
    "risk": {"amqp", "redis", "market_data", "account_state", "database"},
    "execute": {"amqp", "redis", "market_data", "account_state", "database", "exchange"},
    "notify": {"amqp", "redis"},
}


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("service", sorted(CHECKS))
def test_each_service_is_ready_with_its_checks(settings: Settings, service: str) -> None:
    status, body = get_json(settings.services.url_of(service) + "/ready")

    assert status == 200, body
    assert body["ready"] is True and set(body["checks"]) == CHECKS[service]
    assert all(c["ok"] for c in body["checks"].values())


def test_the_feed_is_ready(settings: Settings) -> None:
    status, body = get_json(settings.services.url_of("feed") + "/ready")

    assert status == 200 and body["ready"] is True, body


# ------------------------------------------------------------------ alert end to end





def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def monitoring(settings: Settings, api_key: str, tmp_path: Path) -> Iterator[None]:
    """Prometheus (1 s scrapes of risk) -> Alertmanager -> notify, with the shipped files."""
    prometheus = installed("prometheus")
    alertmanager = installed("prometheus-alertmanager", "alertmanager")
    am_port, prom_port = free_port(), free_port()
    key_file = tmp_path / "api_key"
    key_file.write_text(api_key)
    am = yaml.safe_load((ROOT / "compose/alertmanager/alertmanager.yml").read_text())
    am["route"].update(group_wait="0s", group_interval="1s")
    for receiver in am["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = settings.services.url_of("notify") + urlsplit(hook["url"]).path
            hook["http_config"]["authorization"]["credentials_file"] = str(key_file)
    (tmp_path / "am.yml").write_text(yaml.safe_dump(am))
    shutil.copy(ROOT / "k8s/monitoring/alerts.yml", tmp_path / "alerts.yml")
    risk = urlsplit(settings.services.url_of("risk")).netloc
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],
        "alerting": {"alertmanagers": [{"static_configs": [
            {"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [{"job_name": "phoenix95-risk", "static_configs": [
            {"targets": [risk]}]}],
    }))
    procs = []
    with open(tmp_path / "monitoring.log", "wb") as log:
        procs.append(subprocess.Popen(
            [alertmanager, f"--config.file={tmp_path / 'am.yml'}",
             f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
             "--cluster.listen-address="], stdout=log, stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen(
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=log, stderr=subprocess.STDOUT))
    try:
        wait_for(lambda: ready(f"http://127.0.0.1:{am_port}/-/ready"), timeout=30)
        wait_for(lambda: ready(f"http://127.0.0.1:{prom_port}/-/ready"), timeout=30)
        yield
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)


def test_trading_halted_fires_through_prometheus_alertmanager_and_notify_to_telegram(
        rpc: Any, monitoring: None, telegram: Telegram) -> None:  # noqa: F811
    rpc.risk.set_state("HALTED", "e2e alerting: the alert must fire")
    try:
        text = wait_for(lambda: next((t for t in telegram.texts_to(telegram.chat)
                                      if "[FIRING] Phoenix95TradingHalted" in t), None),
                        timeout=90)
    finally:
        rpc.risk.set_state("ACTIVE", "e2e alerting: cleanup")

    assert "trading is halted" in text
