"""Benchmark the running system: webhook -> 202 and webhook -> entry filled.

Run by hand against a system started with ``scripts/up`` (same environment):

    .venv/bin/python -m benchmarks.webhook_pipeline --n 100
    .venv/bin/python -m benchmarks.webhook_pipeline --n 2000 --burst 16   # intake only

Sequential mode posts one BTCUSDT alert at a time, waits for its ``entry_filled`` and
``brackets_placed`` records on ``trade:stream`` (server timestamps, same clock), then
closes the position over RPC so the next alert can open again. Burst mode posts alerts
that brain scores and rejects (confidence below the gate) from N threads, measuring the
intake alone. Both report p50/p95/p99 and each process's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from shared.records import Record
from shared.settings import Settings, get_settings


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    return {"n": len(ordered), "p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99),
            "max": ordered[-1], "mean": statistics.fmean(ordered)}


def post_alert(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], float, float]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "text/plain"})
    sent = time.time()
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, payload = resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        status, payload = err.code, json.loads(err.read())
    return status, payload, (time.perf_counter() - start) * 1000, sent


RUN = uuid.uuid4().hex[:8]  # a strategy per run: earlier runs' losses are not its record


def alert(settings: Settings, ticker: str, confidence: float) -> dict[str, Any]:
    return {"secret": settings.security.webhook_secret.get_secret_value(), "ticker": ticker,
            "action": "buy", "confidence": confidence, "strategy": f"bench-{RUN}",
            "id": f"bench-{uuid.uuid4().hex}",
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def wait_record(r: Any, signal_id: str, kind: str, since_id: str,
                timeout: float = 10.0) -> Record | None:
    """The ``kind`` record of this signal on trade:stream; None if it failed or timed out."""
    deadline = time.monotonic() + timeout
    last = since_id
    while time.monotonic() < deadline:
        for entry_id, fields in r.xrange("trade:stream", min=f"({last}", count=500):
            last = entry_id
            rec = Record.from_stream_fields(fields)
            if rec.signal_id == signal_id and rec.type in (kind, "trade_failed"):
                return rec if rec.type == kind else None
        for _, fields in r.xrevrange("risk:stream", count=20):
            rec = Record.from_stream_fields(fields)
            if rec.signal_id == signal_id and not rec.data.get("approved"):
                print(f"signal {signal_id} denied by risk: {rec.data.get('reasons')}")
                return None
        time.sleep(0.002)
    return None


def sequential(settings: Settings, n: int) -> dict[str, Any]:
    from shared.signed_rpc import cluster_proxy

    # decoded responses: typed loosely, redis-py's stubs assume bytes
    r: Any = redis.Redis.from_url(settings.redis_streams.url, decode_responses=True)
    url = settings.services.url_of("brain") + "/webhook"
    intake, filled, protected, failures = [], [], [], 0
    with cluster_proxy(settings.message_queue.amqp_uri, timeout=30) as rpc:
        rpc.execute.close_all()
        for _ in range(n):
            last = r.xrevrange("trade:stream", count=1)
            since = last[0][0] if last else "0-0"
            status, payload, ms, sent = post_alert(url, alert(settings, "BTCUSDT", 0.8))
            if status != 202:
                failures += 1
                continue
            intake.append(ms)
            entry = wait_record(r, payload["signal_id"], "entry_filled", since)
            brackets = wait_record(r, payload["signal_id"], "brackets_placed", since)
            if entry is None or brackets is None:
                failures += 1
            else:
                # the exchange's fill time when recorded, else the record's (after brackets)
                fill_ms = int(entry.data.get("filled_at") or entry.ts)
                filled.append(fill_ms - sent * 1000)
                protected.append(brackets.ts - sent * 1000)
            rpc.execute.close("BTCUSDT")
    return {"webhook_to_202_ms": percentiles(intake),
            "webhook_to_entry_filled_ms": percentiles(filled),
            "webhook_to_sl_tp_placed_ms": percentiles(protected), "failures": failures}


def burst(settings: Settings, n: int, threads: int) -> dict[str, Any]:
    url = settings.services.url_of("brain") + "/webhook"
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    per_thread = n // threads

    def worker() -> None:
        nonlocal errors
        for _ in range(per_thread):
            status, _, ms, _ = post_alert(url, alert(settings, "DOGEUSDT", 0.3))
            with lock:
                if status == 202:
                    latencies.append(ms)
                else:
                    errors += 1

    started = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - started
    return {"requests": per_thread * threads, "threads": threads, "seconds": round(elapsed, 2),
            "accepted_per_second": round(len(latencies) / elapsed, 1), "errors": errors,
            "webhook_to_202_ms": percentiles(latencies)}


def peak_rss(settings: Settings) -> dict[str, float]:
    """Peak RSS of every program the run folder's supervisord runs (scripts/up)."""
    from scripts import supervise

    out: dict[str, float] = {}
    run_dir = settings.services.run_path()
    if not supervise.answering(run_dir):
        return out
    for name, info in sorted(supervise.programs(run_dir).items()):
        try:
            status = Path(f"/proc/{info.pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                out[name] = round(int(line.split()[1]) / 1024, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--burst", type=int, default=0, help="threads for intake-only mode")
    args = parser.parse_args()
    settings = get_settings()
    result = burst(settings, args.n, args.burst) if args.burst else sequential(settings, args.n)
    result["peak_rss_mb"] = peak_rss(settings)
    print(json.dumps(result, indent=2, default=lambda v: round(v, 2)))


if __name__ == "__main__":
    main()
