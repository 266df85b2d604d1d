"""``/ready`` of a real ``nameko run`` process (tests.support.ready_probe) against real
RabbitMQ (a vhost of its own) and Redis DB 7: ready only while its consumers are attached
and the feed's market state is fresh; back to ready when the fault is gone."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from shared.settings import load_settings
from shared.state import Price, StateWriter, now_ms
from tests.conftest import TEST_SECRETS
from tests.support.ports import free_port
from tests.support.rabbit import temporary_vhost
from tests.support.state_feed import clear_state
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/7"
MGMT = "http://127.0.0.1:15672/api"
AUTH = "Basic " + base64.b64encode(b"guest:guest").decode()
FULL = {"configure": ".*", "write": ".*", "read": ".*"}


def mgmt(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(MGMT + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": AUTH,
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None



@dataclass
class Running:
    url: str
    vhost: str
    rds: redis.Redis

    def ready(self) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(self.url + "/ready", timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except OSError:
            return 0, {}

    def ready_with_fresh_market(self) -> tuple[int, dict[str, Any]] | None:
        """Ready (the feed's part kept fresh while the service starts), else None."""
        self.fresh_market()
        status, body = self.ready()
        return (status, body) if status == 200 else None

    def fresh_market(self, age_ms: int = 0) -> None:
        now = now_ms()
        StateWriter(self.rds).prices(
            Price(symbol=s, mark=Decimal(100), last=Decimal(100), event_ms=now,
                  updated_ms=now - age_ms)
            for s in load_settings().trading.allowed_symbols)


@pytest.fixture
def running(tmp_path: Path, secrets_env: dict[str, str]) -> Iterator[Running]:
    rds = redis.Redis.from_url(REDIS_URL)
    clear_state(rds)
    with temporary_vhost() as amqp_uri:
        vhost = urllib.parse.unquote(amqp_uri.rsplit("/", 1)[1])
        port = free_port()
        config = tmp_path / "ready.yaml"
        config.write_text(yaml.safe_dump({"AMQP_URI": amqp_uri, "serializer": "json",
                                          "WEB_SERVER_ADDRESS": f"127.0.0.1:{port}"}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PHOENIX")}
        env.update(TEST_SECRETS)
        env.update({"PHOENIX_DOTENV": str(tmp_path / "absent.env"),
                    "PHOENIX__REDIS_STREAMS__URL": REDIS_URL,
                    "PROBE_QUEUE": f"ready_{uuid.uuid4().hex[:8]}"})
        nameko = Path(sys.executable).with_name("nameko")
        with open(tmp_path / "ready.log", "wb") as log:
            proc = subprocess.Popen(
                [str(nameko), "run", "--config", str(config), "tests.support.ready_probe"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield Running(f"http://127.0.0.1:{port}", vhost, rds)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            clear_state(rds)
            rds.close()


def test_ready_when_consumers_are_attached_and_the_market_is_fresh(running: Running) -> None:
    status, body = wait_for(running.ready_with_fresh_market, timeout=60,
                            what="the probe to be ready")

    assert body["ready"] is True and "failing" not in body
    assert set(body["checks"]) == {"amqp", "redis", "market_data"}
    consumed = body["checks"]["amqp"]["detail"]
    assert "rpc-ready_probe" in consumed and "ready_" in consumed


def test_stale_market_data_makes_it_unready_and_fresh_data_ready_again(
        running: Running) -> None:
    wait_for(running.ready_with_fresh_market, timeout=60, what="ready")

    running.fresh_market(age_ms=60_000)
    status, body = running.ready()

    assert status == 503
    assert body["ready"] is False and body["failing"] == ["market_data"]
    assert body["checks"]["amqp"]["ok"] is True
    assert running.ready_with_fresh_market() is not None


def test_a_lost_broker_connection_is_unready_until_the_consumers_are_back(
        running: Running) -> None:
    wait_for(running.ready_with_fresh_market, timeout=60, what="ready")
    quoted = urllib.parse.quote(running.vhost, safe="")

    # the broker refuses this user from now on, and drops its connections
    mgmt("DELETE", f"/permissions/{quoted}/guest")
    for conn in mgmt("GET", f"/vhosts/{quoted}/connections"):
        mgmt("DELETE", f"/connections/{urllib.parse.quote(conn['name'], safe='')}")
    status, body = wait_for(lambda: (r := running.ready())[0] == 503 and r,
                            what="the probe to notice the lost connection")

    assert "amqp" in body["failing"]
    assert body["checks"]["redis"]["ok"] is True
    mgmt("PUT", f"/permissions/{quoted}/guest", FULL)
    wait_for(running.ready_with_fresh_market, timeout=60, what="ready again")
