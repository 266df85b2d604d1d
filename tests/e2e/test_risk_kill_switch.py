"""The kill switch on the running system: HALTED is durable across a restart of every
service, mirrored for brain, and a webhook is then rejected with reason ``halted``.

The restart itself (``scripts/down`` + ``scripts/up``) runs when ``PHOENIX_E2E_RESTART=1``
(it stops and starts the whole stack this environment points at); without it the test
checks the same durability through the database-backed state and the Redis mirror.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.names import (
    ALERT_OUTBOX_STREAM,
    RISK_STREAM,
    SIGNAL_STREAM,
    TRADE_STREAM,
    TRADING_STATE_KEY,
)
from shared.records import Record
from shared.signed_rpc import cluster_proxy
from tests.e2e.test_flow import alert, post, stream_records, wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def halted(settings: Any, rpc: Any) -> Iterator[None]:
    rpc.risk.set_state("HALTED", "e2e kill switch")
    yield
    with cluster_proxy(settings.message_queue.amqp_uri, timeout=30) as n:
        n.risk.set_state("ACTIVE", "e2e kill switch released")


def _restart_everything() -> None:
    for script in (["scripts/down"], ["scripts/up", "--no-dashboard"]):
        subprocess.run(script, cwd=ROOT, check=True, timeout=600,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _halted_records(streams: Any, signal_id: str) -> list[Any]:
    return [r for stream in (SIGNAL_STREAM, RISK_STREAM)
            for r in stream_records(streams, stream, signal_id)
            if '"halted"' in json.dumps(r.data)]


def _intent() -> dict[str, Any]:
    sid = uuid.uuid4().hex
    return {"signal_id": sid, "idempotency_key": f"e2e:{sid}", "symbol": "BTCUSDT",
            "side": "LONG", "quantity": "0.010", "reference_price": "60000", "leverage": 20,
            "stop_loss": "58800", "take_profit": "61200", "margin": "30"}


def _verdict(streams: Any, signal_id: str) -> list[Record]:
    """Records that end a signal: a rejection carrying ``halted``, or brain's own gates."""
    halted = _halted_records(streams, signal_id)
    scored = [r for r in stream_records(streams, SIGNAL_STREAM, signal_id)
              if r.type == "signal_scored" and r.data.get("decision") == "rejected"]
    return halted or scored


def test_halted_survives_a_restart_and_a_webhook_is_rejected_as_halted(
        settings: Any, streams: Any, halted: None) -> None:
    if os.environ.get("PHOENIX_E2E_RESTART") == "1":
        _restart_everything()

    with cluster_proxy(settings.message_queue.amqp_uri, timeout=30) as n:
        state = n.risk.status()["state"]
        decision = n.risk.check(_intent())
    status, body = post(settings.services.url_of("brain") + "/webhook",
                        alert(settings, confidence=0.95), content_type="text/plain")

    assert state == "HALTED"
    assert streams.get(TRADING_STATE_KEY) == "HALTED"
    assert not decision["approved"] and decision["reasons"][0] == "halted"
    assert _halted_records(streams, decision["signal_id"])  # the risk_check record
    if status != 202:  # brain refused it at the door
        assert "halted" in json.dumps(body), (status, body)
        return
    verdict = wait_for(lambda: _verdict(streams, body["signal_id"]), timeout=30)
    checked = [r for r in stream_records(streams, RISK_STREAM, body["signal_id"])
               if r.type == "risk_check"]
    assert verdict
    assert all("halted" in r.data["reasons"] for r in checked)
    assert not stream_records(streams, TRADE_STREAM, body["signal_id"])


def test_state_change_is_recorded_and_alerted_through_notify(streams: Any,
                                                             halted: None) -> None:
    def state_records() -> list[Record]:
        return [r for r in (Record.from_stream_fields(f)
                            for _, f in streams.xrevrange(RISK_STREAM, count=1000))
                if r.type == "state_changed" and r.data.get("reason") == "e2e kill switch"]

    def outbox_texts() -> list[str]:
        return [json.loads(f["data"]).get("text", "")
                for _, f in streams.xrevrange(ALERT_OUTBOX_STREAM, count=1000)]

    records = wait_for(state_records)
    texts = wait_for(lambda: [t for t in outbox_texts()
                              if "-> HALTED" in t and "e2e kill switch" in t])

    assert records[0].data["state"] == "HALTED"
    assert texts
