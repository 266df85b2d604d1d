"""``@durable_consume`` in a real ``nameko run`` process against real RabbitMQ (a vhost of
its own) and Redis DB 9: delayed retries wait in ``<queue>.retry``, not in a worker;
Redis and database blips are retried; the last failure is dead-lettered with its reason
and an alert; ``scripts/dlq`` lists, replays and drops dead letters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from kombu import Connection

from scripts import dlq
from shared.consumer import ERROR_HEADER, QUEUE_HEADER, RETRY_HEADER, SERVICE_HEADER
from shared.names import (
    DEAD_LETTER_ALERT_CODE,
    RISK_ALERT_QUEUE,
    kombu_dead_letter_queue,
    kombu_queue,
    kombu_retry_queue,
)
from tests.conftest import TEST_SECRETS
from tests.support.durable_probe import probe_queue
from tests.support.rabbit import temporary_vhost

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/9"


@dataclass
class Probe:
    amqp_uri: str
    queue: str
    done_key: str
    rds: redis.Redis

    def publish(self, fail: str = "ok", times: int = 1) -> str:
        msg_id = uuid.uuid4().hex[:12]
        with Connection(self.amqp_uri) as conn:
            q = probe_queue(self.queue)
            conn.Producer().publish({"id": msg_id, "fail": fail, "times": times,
                                     "signal_id": f"sig-{msg_id}"},
                                    exchange=q.exchange, routing_key=self.queue,
                                    serializer="json", delivery_mode=2, declare=[q])
        return msg_id

    def done(self) -> list[str]:
        return [v.decode() for v in self.rds.lrange(self.done_key, 0, -1)]

    def attempts(self, msg_id: str) -> int:
        return int(self.rds.get(f"{self.done_key}:attempts:{msg_id}") or 0)

    def depth(self, queue: str) -> int:
        with Connection(self.amqp_uri) as conn:
            return int(conn.default_channel.queue_declare(queue, passive=True).message_count)

    def depth_or_none(self, queue: str) -> int | None:
        try:
            return self.depth(queue)
        except Exception:  # noqa: BLE001 - the queue does not exist
            return None

    def get_all(self, queue: Any) -> list[Any]:
        out = []
        with Connection(self.amqp_uri) as conn:
            bound = queue(conn.channel())
            bound.declare()
            while (msg := bound.get(no_ack=True)) is not None:
                out.append(msg)
        return out


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or condition}")


@pytest.fixture
def start_probe(tmp_path: Path) -> Iterator[Callable[..., Probe]]:
    yield from run_probes(tmp_path)


def run_probes(tmp_path: Path, module: str = "tests.support.durable_probe",
               fixed_queue: str | None = None) -> Iterator[Callable[..., Probe]]:
    """Start ``module`` with ``nameko run`` on a vhost of its own, per call of the yielded
    function; ``fixed_queue``: the module consumes that queue (else a fresh probe queue)."""
    procs: list[subprocess.Popen[bytes]] = []
    stack: list[Any] = []
    rds = redis.Redis.from_url(REDIS_URL)

    def start(retries: int = 3, retry_delay: float = 3.0) -> Probe:
        vhost = temporary_vhost()
        amqp_uri = vhost.__enter__()
        stack.append(vhost)
        queue = fixed_queue or f"probe_{uuid.uuid4().hex[:8]}"
        done_key = f"phoenix95:test:probe:{uuid.uuid4().hex[:8]}"
        config = tmp_path / f"{queue}.yaml"
        # one worker: a retry that slept inside it would hold up every later message
        config.write_text(yaml.safe_dump({"AMQP_URI": amqp_uri, "max_workers": 1,
                                          "serializer": "json"}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PHOENIX")}
        env.update(TEST_SECRETS)
        env.update({"PHOENIX_DOTENV": str(tmp_path / "absent.env"),
                    "PHOENIX__MESSAGE_QUEUE__RETRIES": str(retries),
                    "PHOENIX__MESSAGE_QUEUE__RETRY_DELAY": str(retry_delay),
                    "PROBE_QUEUE": queue, "PROBE_DONE": done_key, "PROBE_REDIS": REDIS_URL})
        nameko = Path(sys.executable).with_name("nameko")
        with open(tmp_path / f"{queue}.log", "wb") as log:  # the child keeps its own handle
            procs.append(subprocess.Popen(
                [str(nameko), "run", "--config", str(config), module],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        probe = Probe(amqp_uri, queue, done_key, rds)
        # the alert queue exists from the start (notify would have declared it)
        probe.get_all(kombu_queue(RISK_ALERT_QUEUE))

        def consuming() -> bool:
            with Connection(amqp_uri) as conn:
                try:
                    ok = conn.default_channel.queue_declare(queue, passive=True)
                except Exception:  # noqa: BLE001 - not declared yet
                    return False
                return int(ok.consumer_count) >= 1
        wait_for(consuming, what="the probe service to consume")
        return probe

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=20)
    for vhost in stack:
        vhost.__exit__(None, None, None)
    for key in rds.scan_iter("phoenix95:test:probe:*"):
        rds.delete(key)
    rds.close()


def alerts(probe: Probe) -> list[dict[str, Any]]:
    return [json.loads(m.body) for m in probe.get_all(kombu_queue(RISK_ALERT_QUEUE))]


# --------------------------------------------------------------------------- retries


def test_retry_waits_in_the_retry_queue_while_the_worker_takes_the_next_message(
        start_probe: Callable[..., Probe]) -> None:
    probe = start_probe(retry_delay=3.0)
    slow = probe.publish("retryable", times=1)
    wait_for(lambda: probe.attempts(slow) == 1, what="the first attempt")
    quick = probe.publish("ok")

    wait_for(lambda: quick in probe.done(), what="the next message")
    # the only worker was free, and the failed message sits in the broker, not in it
    assert slow not in probe.done()
    assert probe.depth(kombu_retry_queue(probe.queue).name) == 1

    wait_for(lambda: slow in probe.done(), what="the retried message")
    assert probe.attempts(slow) == 2
    assert probe.depth(probe.queue) == 0
    assert probe.depth(kombu_retry_queue(probe.queue).name) == 0
    assert probe.depth_or_none(kombu_dead_letter_queue(probe.queue).name) in (None, 0)


def test_a_message_whose_retry_publish_fails_is_requeued_not_lost(
        start_probe: Callable[..., Probe]) -> None:
    probe = start_probe(retry_delay=0.2)
    # a retry queue the broker refuses to redeclare (PRECONDITION_FAILED on every publish)
    with Connection(probe.amqp_uri) as conn:
        conn.default_channel.queue_declare(kombu_retry_queue(probe.queue).name, durable=True,
                                           arguments={"x-max-length": 1})
    msg = probe.publish("retryable", times=3)

    wait_for(lambda: msg in probe.done(), what="the requeued message")

    assert probe.attempts(msg) == 4  # three failed tries, each put back, then success
    assert probe.depth(kombu_retry_queue(probe.queue).name) == 0
    assert probe.depth_or_none(kombu_dead_letter_queue(probe.queue).name) in (None, 0)


@pytest.mark.parametrize("blip", ["redis", "db"])
def test_redis_and_database_blips_are_retried_not_dead_lettered(
        start_probe: Callable[..., Probe], blip: str) -> None:
    probe = start_probe(retry_delay=0.2)
    msg = probe.publish(blip, times=2)

    wait_for(lambda: msg in probe.done(), what=f"the {blip} blip to pass")

    assert probe.attempts(msg) == 3
    assert probe.depth_or_none(kombu_dead_letter_queue(probe.queue).name) in (None, 0)
    assert alerts(probe) == []


def test_after_the_last_retry_the_message_is_dead_lettered_with_its_reason_and_an_alert(
        start_probe: Callable[..., Probe]) -> None:
    probe = start_probe(retries=2, retry_delay=0.2)
    msg = probe.publish("retryable", times=1000)

    dlq_name = kombu_dead_letter_queue(probe.queue).name
    wait_for(lambda: probe.depth_or_none(dlq_name), what="the dead letter")

    assert probe.attempts(msg) == 3  # the first try and two retries
    [dead] = probe.get_all(kombu_dead_letter_queue(probe.queue))
    assert json.loads(dead.body)["id"] == msg
    assert dead.headers[RETRY_HEADER] == 2
    assert "gave up after 2 retries" in dead.headers[ERROR_HEADER]
    assert "downstream did not answer" in dead.headers[ERROR_HEADER]
    assert dead.headers[SERVICE_HEADER] == "durable_probe"
    assert dead.headers[QUEUE_HEADER] == probe.queue
    [alert] = wait_for(lambda: alerts(probe), what="the dead-letter alert")
    assert alert["code"] == DEAD_LETTER_ALERT_CODE and alert["level"] == "critical"
    assert alert["signal_id"] == f"sig-{msg}"
    assert probe.queue in alert["text"] and "gave up after 2 retries" in alert["text"]


def test_poison_message_is_dead_lettered_at_once_with_an_alert(
        start_probe: Callable[..., Probe]) -> None:
    probe = start_probe(retry_delay=0.2)
    msg = probe.publish("poison")

    wait_for(lambda: probe.depth_or_none(kombu_dead_letter_queue(probe.queue).name),
             what="the dead letter")

    assert probe.attempts(msg) == 1
    [dead] = probe.get_all(kombu_dead_letter_queue(probe.queue))
    assert dead.headers[ERROR_HEADER].startswith("ValueError: poison")
    [alert] = wait_for(lambda: alerts(probe), what="the dead-letter alert")
    assert alert["code"] == DEAD_LETTER_ALERT_CODE


# --------------------------------------------------------------------------- scripts/dlq


def test_dlq_lists_replays_one_message_and_drops_the_rest(
        start_probe: Callable[..., Probe]) -> None:
    probe = start_probe(retries=0, retry_delay=0.2)
    first = probe.publish("poison", times=1)  # a later delivery would succeed
    second = probe.publish("poison", times=1)
    dlq_name = kombu_dead_letter_queue(probe.queue).name
    wait_for(lambda: probe.depth_or_none(dlq_name) == 2, what="two dead letters")

    listed = dlq.list_dead_letters(probe.amqp_uri, [probe.queue])
    [(queue, letters)] = listed.items()
    assert queue == probe.queue and len(letters) == 2
    assert all(letter.reason.startswith("ValueError: poison") for letter in letters)
    assert all(letter.age_s >= 0 for letter in letters)
    assert probe.depth(dlq_name) == 2  # listing took nothing away
    by_body = {json.loads(letter.body)["id"]: letter for letter in letters}

    moved = dlq.replay(probe.amqp_uri, probe.queue, by_body[first].id)
    assert moved == 1
    wait_for(lambda: first in probe.done(), what="the replayed message")
    assert probe.depth(dlq_name) == 1

    assert dlq.drop(probe.amqp_uri, probe.queue, None) == 1
    assert probe.depth(dlq_name) == 0
    assert second not in probe.done()


def test_dlq_command_line_prints_each_dead_letter(
        start_probe: Callable[..., Probe], capsys: pytest.CaptureFixture[str]) -> None:
    probe = start_probe(retries=0, retry_delay=0.2)
    probe.publish("poison")
    wait_for(lambda: probe.depth_or_none(kombu_dead_letter_queue(probe.queue).name) == 1,
             what="the dead letter")

    code = dlq.main(["--amqp-uri", probe.amqp_uri, "list", probe.queue, "no_such_queue"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"{probe.queue}.dlq: 1 message" in out
    assert "ValueError: poison" in out
    assert "no_such_queue.dlq: no such queue" in out
    [letter] = dlq.list_dead_letters(probe.amqp_uri, [probe.queue])[probe.queue]

    # the shell wrapper, as the README shows it
    # (as a user's shell runs it: not inside an already bootstrapped interpreter)
    env = {k: v for k, v in os.environ.items() if k != "PHOENIX_BOOTSTRAPPED"}
    proc = subprocess.run([str(ROOT / "scripts" / "dlq"), "--amqp-uri", probe.amqp_uri,
                           "drop", f"{probe.queue}.dlq", "--id", letter.id],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"dropped 1 message(s) from {probe.queue}.dlq" in proc.stdout
    assert probe.depth(kombu_dead_letter_queue(probe.queue).name) == 0
