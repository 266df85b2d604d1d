"""Benchmark ``risk.check`` over Nameko RPC: latency p50/p99 and checks/s.

Run by hand against a system started with ``scripts/up`` (same environment):

    .venv/bin/python -m benchmarks.risk_check --n 400                  # one risk instance
    .venv/bin/python -m benchmarks.risk_check --n 400 --instances 2    # + a second one

``--instances 2`` starts one more ``nameko run`` of the risk service (same broker, its
HTTP port moved by ``--port-offset``) for the run and stops it afterwards; RabbitMQ
spreads the RPC requests over both. Each check is the full path: snapshot from the
exchange (balance, positions, ticker, brackets), the three stages, the atomic Lua
reservation in Redis, the ``risk_check`` record on Redis + Kafka. The intents are small
BTCUSDT longs; once the configured order rate is used up they are denied inside the
reservation script, which is the same work. Each reservation is given back right after
its check (untimed, as ``execute.trade_failed`` would), so every check reaches the
reservation script; leftovers are removed at the end (signal ids ``bench-…``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import redis
import yaml

from shared.exchange import make_exchange
from shared.names import RISK_ORDER_RATE_KEY, RISK_RESERVATIONS_KEY
from shared.settings import Settings, get_settings
from shared.signed_rpc import cluster_proxy

ROOT = Path(__file__).resolve().parents[1]


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    return {"n": len(ordered), "p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99),
            "max": ordered[-1], "mean": statistics.fmean(ordered)}


def intent(price: float) -> dict[str, Any]:
    sid = f"bench-{uuid.uuid4().hex}"
    return {"signal_id": sid, "idempotency_key": sid, "symbol": "BTCUSDT", "side": "LONG",
            "quantity": "0.002", "reference_price": str(price), "alert_price": str(price),
            "leverage": 20, "stop_loss": str(round(price * 0.98, 1)),
            "take_profit": str(round(price * 1.02, 1)), "margin": str(round(price * 0.0001, 4))}


def run(settings: Settings, n: int, concurrency: int, price: float) -> dict[str, Any]:
    latencies: list[float] = []
    approved = [0]
    reasons: dict[str, int] = {}
    lock = threading.Lock()
    per_thread = n // concurrency
    config = {"AMQP_URI": settings.message_queue.amqp_uri}

    store = redis.Redis.from_url(settings.redis_streams.url)

    def worker() -> None:
        with cluster_proxy(config["AMQP_URI"], timeout=30) as rpc:
            warm = intent(price)
            rpc.risk.check(warm)  # warm the connection
            store.hdel(RISK_RESERVATIONS_KEY, warm["signal_id"])
            for _ in range(per_thread):
                body = intent(price)
                started = time.perf_counter()
                decision = rpc.risk.check(body)
                elapsed = (time.perf_counter() - started) * 1000
                # give the slot back (as execute.trade_failed would), untimed
                store.hdel(RISK_RESERVATIONS_KEY, body["signal_id"])
                with lock:
                    latencies.append(elapsed)
                    approved[0] += int(decision["approved"])
                    for reason in decision["reasons"]:
                        reasons[reason] = reasons.get(reason, 0) + 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    wall = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - wall
    return {"concurrency": concurrency, "checks_per_s": len(latencies) / wall,
            "approved": approved[0], "denials": reasons, **percentiles(latencies)}


def start_extra_instance(settings: Settings, offset: int) -> subprocess.Popen[bytes]:
    source = settings.services.run_path() / "nameko-risk.yaml"
    config = yaml.safe_load(source.read_text())
    host, port = config["WEB_SERVER_ADDRESS"].rsplit(":", 1)
    config["WEB_SERVER_ADDRESS"] = f"{host}:{int(port) + offset}"
    target = settings.services.run_path() / "nameko-risk-bench.yaml"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(config, fh)
    nameko = Path(sys.executable).with_name("nameko")
    log = open(settings.services.run_path() / "logs" / "risk-bench.log", "ab")
    proc = subprocess.Popen([str(nameko), "run", "--config", str(target),
                             "nameko_services.risk.service"], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://{host}:{int(port) + offset}/health"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"the extra risk instance did not become healthy ({url})")


def clean_up(settings: Settings) -> int:
    client = redis.Redis.from_url(settings.redis_streams.url, decode_responses=True)
    keys: list[str] = [str(k) for k in client.hkeys(RISK_RESERVATIONS_KEY)]
    ours = [k for k in keys if k.startswith("bench-")]
    if ours:
        client.hdel(RISK_RESERVATIONS_KEY, *ours)
    members: list[str] = [str(m) for m in client.zrange(RISK_ORDER_RATE_KEY, 0, -1)]
    rated = [m for m in members if m.startswith("bench-")]
    if rated:
        client.zrem(RISK_ORDER_RATE_KEY, *rated)
    return len(ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=400, help="checks per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--instances", type=int, choices=[1, 2], default=1)
    parser.add_argument("--port-offset", type=int, default=17)
    args = parser.parse_args()
    settings = get_settings()
    with cluster_proxy(settings.message_queue.amqp_uri, timeout=30) as rpc:
        status = rpc.risk.status()
    price = float(make_exchange(settings).fetch_ticker("BTC/USDT:USDT")["last"])
    extra = start_extra_instance(settings, args.port_offset) if args.instances == 2 else None
    try:
        results = [run(settings, args.n, c, price) for c in args.concurrency]
    finally:
        if extra is not None:
            extra.terminate()
            extra.wait(timeout=30)
        removed = clean_up(settings)
    print(json.dumps({"instances": args.instances, "state": status["state"],
                      "reservations_removed": removed, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
