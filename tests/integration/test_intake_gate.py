"""The webhook's one-round-trip admission (rate limit, trading state, idempotency claim)
on a real Redis (db 6), and the webhook behind it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from nameko_services.brain.dependencies import IntakeGate
from shared.names import TRADING_STATE_KEY
from shared.settings import load_settings
from tests.support.brain_fakes import FakeTelemetry

REDIS_URL = "redis://127.0.0.1:6379/6"


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    conn.delete(TRADING_STATE_KEY)
    yield conn
    conn.delete(TRADING_STATE_KEY)
    for pattern in ("phoenix95:idem:*", "phoenix95:rate:*"):  # db 6 is this file's alone
        for key in conn.scan_iter(pattern):
            conn.delete(key)
    conn.close()


def _uid() -> str:
    return uuid.uuid4().hex


def test_admit_claims_once_and_names_the_earlier_signal(client):
    gate, key = IntakeGate(client, 100), _uid()

    first = gate.admit(_uid(), key, "sig-1", entry=True)
    gate.confirm(key, "sig-1")  # sig-1 is on the queue
    again = gate.admit(_uid(), key, "sig-2", entry=True)

    assert first.verdict == "ok"
    assert (again.verdict, again.detail) == ("duplicate", "sig-1")
    assert client.ttl("phoenix95:idem:" + key) > 3600  # the whole window once queued


def test_a_claim_whose_signal_was_never_queued_answers_in_flight_then_lapses(client):
    # the brain that claimed it was killed before publishing: a retry must not be told
    # "duplicate" (nothing would ever process the alert), and later it must go through
    gate, key = IntakeGate(client, 100), _uid()
    gate.admit(_uid(), key, "sig-1", entry=True)

    retry = gate.admit(_uid(), key, "sig-2", entry=True)
    client.delete("phoenix95:idem:" + key)  # the pending claim's short TTL has run out
    later = gate.admit(_uid(), key, "sig-3", entry=True)

    assert (retry.verdict, retry.detail) == ("in_flight", "sig-1") and retry.wait > 0
    assert 0 < client.ttl("phoenix95:idem:" + key) <= 30
    assert later.verdict == "ok"


def test_admit_over_the_limit_is_rate_limited_and_claims_nothing(client):
    gate, sender, key, now = IntakeGate(client, 2), _uid(), _uid(), 1_800_000_015.0
    for _ in range(2):
        assert gate.admit(sender, _uid(), "s", entry=True, now=now).verdict == "ok"

    refused = gate.admit(sender, key, "sig-3", entry=True, now=now)
    next_minute = gate.admit(sender, key, "sig-4", entry=True, now=now + 60)

    assert (refused.verdict, refused.wait) == ("rate_limited", 45)
    assert next_minute.verdict == "ok"  # the refused alert held no claim on its key


def test_admit_refuses_entries_but_not_closes_while_halted(client):
    gate = IntakeGate(client, 100)
    client.set(TRADING_STATE_KEY, "halted")
    entry_key = _uid()

    entry = gate.admit(_uid(), entry_key, "sig-1", entry=True)
    close = gate.admit(_uid(), _uid(), "sig-2", entry=False)

    assert (entry.verdict, entry.detail) == ("halted", "HALTED")
    assert close.verdict == "ok"
    assert client.get("phoenix95:idem:" + entry_key) is None  # a refused entry holds no claim


def _request(body: dict, remote_addr: str) -> Request:
    env = EnvironBuilder(method="POST", path="/webhook", data=json.dumps(body),
                         content_type="application/json",
                         environ_base={"REMOTE_ADDR": remote_addr}).get_environ()
    return Request(env)


class _Bus:
    def __init__(self) -> None:
        self.published: list[object] = []

    def publish(self, exchange, key, message, declare=None, headers=None):
        self.published.append(message)


def test_unauthenticated_flood_leaves_the_real_senders_budget_and_redis_untouched(
        client, secrets_env):
    from nameko.testing.services import worker_factory

    from nameko_services.brain.service import BrainService

    settings = load_settings()
    brain = worker_factory(BrainService, config=settings, gate=IntakeGate(client, 3),
                           bus=_Bus(), telemetry=FakeTelemetry())
    sender = f"198.51.100.{uuid.uuid4().int % 250 + 1}"
    client.delete(*client.keys(f"phoenix95:rate:{sender}:*") or ["-"])
    secret = settings.security.webhook_secret.get_secret_value()
    alert = {"ticker": "BTCUSDT", "action": "buy", "confidence": 0.8,
             "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}

    for _ in range(20):
        assert brain.webhook(_request({**alert, "secret": "guess", "id": _uid()},
                                      sender)).status_code == 401
    statuses = [brain.webhook(_request({**alert, "secret": secret, "id": _uid()},
                                       sender)).status_code for _ in range(4)]

    assert statuses == [202, 202, 202, 429]
    assert len(brain.bus.published) == 3
    assert brain.telemetry.records and all(
        r.type == "signal_accepted" for _, r in brain.telemetry.records)
