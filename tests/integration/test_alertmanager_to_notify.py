"""The shipped Alertmanager receiver (compose/alertmanager/alertmanager.yml) against notify's
``POST /alertmanager``: a real Alertmanager binary (Debian's prometheus-alertmanager) sends
an alert pushed to its API; notify authenticates it (Bearer from ``credentials_file``),
parses it and queues it in the outbox (the Telegram stand-in here)."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from nameko.testing.services import worker_factory
from werkzeug.serving import make_server
from werkzeug.wrappers import Request

from nameko_services.notify.engine import AlertPolicy
from tests.support.notify_fakes import FakeOutbox, MemoryLatch
from tests.support.ports import free_port, installed
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "compose" / "alertmanager" / "alertmanager.yml"


def alertmanager_binary() -> str:
    return installed("prometheus-alertmanager", "alertmanager")



@pytest.fixture
def notify(secrets_env: dict[str, str]) -> Iterator[tuple[str, FakeOutbox, list[int]]]:
    """notify's handler behind a real HTTP server; yields its base URL, outbox, statuses."""
    from nameko_services.notify.alerts import Alerts
    from nameko_services.notify.service import NotifyService
    from shared.settings import get_settings

    outbox = FakeOutbox()
    svc = worker_factory(NotifyService, config=get_settings(),
                         alerts=Alerts(outbox, AlertPolicy("normal"), MemoryLatch()))  # type: ignore[arg-type]
    statuses: list[int] = []

    def app(environ: Any, start_response: Any) -> Any:
        request = Request(environ)
        response = svc.alertmanager(request) if request.path == "/alertmanager" else None
        if response is None:
            start_response("404 Not Found", [])
            return [b""]
        statuses.append(response.status_code)
        return response(environ, start_response)

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", outbox, statuses
    server.shutdown()


def shipped_config(notify_url: str, key_file: Path) -> dict[str, Any]:
    """The shipped file with notify's address and the key file of this test."""
    config = yaml.safe_load(SHIPPED.read_text())
    config["route"]["group_wait"] = "0s"
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            assert hook["url"].startswith("http://notify:8103/")
            hook["url"] = notify_url + hook["url"].removeprefix("http://notify:8103")
            hook["http_config"]["authorization"]["credentials_file"] = str(key_file)
    return config


@pytest.mark.parametrize("key", ["unit-test-api-key-long-enough-24", "not-a-configured-key"])
def test_an_alert_fires_through_alertmanager_into_notify(
        notify: tuple[str, FakeOutbox, list[int]], tmp_path: Path, key: str) -> None:
    url, outbox, statuses = notify
    key_file = tmp_path / "api_key"
    key_file.write_text(key + "\n")
    (tmp_path / "am.yml").write_text(yaml.safe_dump(shipped_config(url, key_file)))
    port = free_port()
    with open(tmp_path / "am.log", "wb") as log:
        proc = subprocess.Popen(
            [alertmanager_binary(), f"--config.file={tmp_path / 'am.yml'}",
             f"--storage.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--cluster.listen-address="], stdout=log, stderr=subprocess.STDOUT)
    try:
        api = f"http://127.0.0.1:{port}/api/v2"

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2):
                    return True
            except OSError:
                return False
        wait_for(healthy, what="alertmanager to start")
        alert = [{"labels": {"alertname": "Phoenix95TradingHalted", "severity": "critical"},
                  "annotations": {"summary": "trading is halted",
                                  "description": "The risk service halted trading."}}]
        req = urllib.request.Request(f"{api}/alerts", data=json.dumps(alert).encode(),
                                     method="POST",
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=5).close()

        wait_for(lambda: statuses, what="alertmanager's webhook to reach notify")
    finally:
        proc.terminate()
        proc.wait(timeout=20)

    if key == "unit-test-api-key-long-enough-24":
        assert statuses[0] == 202
        assert outbox.items == [("critical", "[FIRING] Phoenix95TradingHalted\n"
                                 "trading is halted\nThe risk service halted trading.", "")]
    else:
        assert statuses[0] == 401
        assert outbox.items == []
