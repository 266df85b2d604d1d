"""Brain on the running system: stale alerts, the audit trail of a scored signal, dry runs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.e2e.test_flow import alert, kafka_records, post, stream_records, wait_for

pytestmark = pytest.mark.e2e


def test_alert_older_than_the_max_age_is_refused_as_stale(settings: Any) -> None:
    old = (datetime.now(UTC) - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")

    status, body = post(f"{settings.services.url_of('brain')}/webhook",
                        alert(settings, time=old))

    assert status == 422
    assert (body["reason"], body["field"]) == ("stale", "time")


def test_every_analysed_signal_is_audited_on_the_stream_and_kafka(settings: Any,
                                                                  streams: Any) -> None:
    # confidence under trading.min_confidence: scored and rejected, never traded
    status, body = post(f"{settings.services.url_of('brain')}/webhook",
                        alert(settings, confidence=0.05, strategy=f"e2e-{uuid.uuid4().hex[:8]}"))
    assert status == 202
    signal_id = body["signal_id"]

    scored = wait_for(lambda: [r for r in stream_records(streams, "signal:stream", signal_id)
                               if r.type == "signal_scored"], timeout=30)

    data = scored[0].data
    assert data["decision"] == "rejected" and "confidence_below_min" in data["reasons"]
    assert data["model_version"].startswith("phoenix95-lr-")
    assert data["features"] == {}  # gate 1 refuses before reading the market
    assert data["gates"]["min_confidence"] == {"value": 0.05, "threshold": 0.25,
                                               "passed": False}
    on_kafka = [r for r in kafka_records(settings, "phoenix95_signals", signal_id)
                if r["type"] == "signal_scored"]
    assert on_kafka and on_kafka[0]["data"]["model_version"] == data["model_version"]


def test_dry_run_rpc_returns_the_decision_without_trading(rpc: Any, streams: Any) -> None:
    result = rpc.brain.analyze({"ticker": "BINANCE:ETHUSDT.P", "action": "sell",
                                "confidence": 0.9}, dry_run=True)

    assert result["dry_run"] is True and result["side"] == "SHORT"
    assert result["model_version"].startswith("phoenix95-lr-")
    assert set(result["gates"]) == {"min_confidence", "phoenix_threshold",
                                    "execute_threshold"}
    assert 0.0 < result["model_probability"] < 1.0
    assert {"trend_fast", "trend_slow", "rsi", "macd", "bollinger", "atr_bracket",
            "volume"} <= set(result["features"])
    assert stream_records(streams, "signal:stream", result["signal_id"]) == []
