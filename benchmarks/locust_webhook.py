"""Locust load test of brain's ``POST /webhook``, with a check that no accepted signal is lost.

Against a running system whose per-client rate limit is raised (one load generator is one
client address), headless and bounded:

    PHOENIX__SECURITY__RATE_LIMIT_PER_MINUTE=100000 scripts/up --no-dashboard
    .venv/bin/locust -f benchmarks/locust_webhook.py --headless -u 64 -r 16 -t 60s \
        --host http://127.0.0.1:8100 --csv var/locust_webhook

Every alert is unique (its own ``id``, the current ``time``) and carries a confidence under
``trading.min_confidence``, so brain accepts it (202, queued durably), scores it and
rejects it at gate 1 without trading. When the run stops, the script waits for every
accepted ``signal_id`` to appear as ``signal_scored`` on ``signal:stream`` and prints
how many were found: zero lost is the pass condition (exit code 1 otherwise).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import redis
from locust import HttpUser, between, events, task

from shared.names import SIGNAL_STREAM
from shared.records import Record
from shared.settings import get_settings

ACCEPTED: set[str] = set()
_LOCK = threading.Lock()
DRAIN_TIMEOUT_S = float(os.environ.get("PHOENIX_BENCH_DRAIN_S", "120"))


class TradingViewAlerts(HttpUser):
    wait_time = between(0, 0)

    def on_start(self) -> None:
        self.secret = get_settings().security.webhook_secret.get_secret_value()

    @task
    def alert(self) -> None:
        body = {"secret": self.secret, "ticker": "BINANCE:BTCUSDT.P", "action": "buy",
                "price": 60000, "confidence": 0.05, "strategy": "locust", "interval": "1",
                "id": f"locust-{uuid.uuid4().hex}",
                "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        with self.client.post("/webhook", data=json.dumps(body),
                              headers={"Content-Type": "text/plain"},
                              catch_response=True, name="/webhook") as resp:
            if resp.status_code == 202:
                with _LOCK:
                    ACCEPTED.add(resp.json()["signal_id"])
                resp.success()
            else:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")


def scored_ids(since_ms: int) -> set[str]:
    """signal_ids with a ``signal_scored`` record on signal:stream since ``since_ms``."""
    client = redis.Redis.from_url(get_settings().redis_streams.url, decode_responses=True)
    found: set[str] = set()
    cursor = f"{since_ms}-0"
    while True:
        batch: Any = client.xrange(SIGNAL_STREAM, min=cursor, count=5000)
        if not batch:
            return found
        for _entry_id, fields in batch:
            rec = Record.from_stream_fields(fields)
            if rec.type == "signal_scored":
                found.add(rec.signal_id)
        last = str(batch[-1][0])
        ms, seq = last.split("-")
        cursor = f"{ms}-{int(seq) + 1}"


_STARTED_MS = [0]


@events.test_start.add_listener
def _on_start(environment: Any, **_: Any) -> None:
    _STARTED_MS[0] = int(time.time() * 1000) - 1000


@events.test_stop.add_listener
def _on_stop(environment: Any, **_: Any) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    missing = set(ACCEPTED)
    while missing and time.monotonic() < deadline:
        missing -= scored_ids(_STARTED_MS[0])
        if missing:
            time.sleep(1.0)
    stats = environment.stats.total
    print(json.dumps({
        "accepted": len(ACCEPTED), "processed": len(ACCEPTED) - len(missing),
        "lost": len(missing), "requests": stats.num_requests, "failures": stats.num_failures,
        "rps": round(stats.total_rps, 1), "p50_ms": stats.get_response_time_percentile(0.5),
        "p99_ms": stats.get_response_time_percentile(0.99),
    }))
    if missing:
        environment.process_exit_code = 1
