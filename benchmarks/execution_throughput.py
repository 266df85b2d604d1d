"""Benchmark execute alone: trade intents straight onto the ``trade_execution`` queue.

Run by hand against a system started with ``scripts/up`` (same environment):

    .venv/bin/python -m benchmarks.execution_throughput --n 200              # one instance
    .venv/bin/python -m benchmarks.execution_throughput --n 200 --instances 2

Intents rotate over the five symbols at the exchange's minimum size (the per-symbol lock
serialises one symbol, so a second instance can only help across symbols). Each intent is
an entry plus its reduce-only stop-loss and take-profit through ccxt to the paper
exchange. Reported: publish -> ``entry_filled`` latency percentiles and intents/s, from
the first publish to the last ``entry_filled`` record. Positions are closed at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from decimal import Decimal
from typing import Any

import redis
from kombu import Connection

from benchmarks.webhook_pipeline import percentiles
from shared.exchange import make_exchange
from shared.models import TradeIntent
from shared.money import bracket_prices
from shared.names import SIGNALS_EXCHANGE, TRADE_KEY, kombu_exchange
from shared.records import Record
from shared.settings import Settings, get_settings

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "ADAUSDT", "DOGEUSDT")


def minimum_intents(settings: Settings, n: int) -> list[TradeIntent]:
    ex = make_exchange(settings)
    ex.load_markets()
    out: list[TradeIntent] = []
    for i in range(n):
        symbol = SYMBOLS[i % len(SYMBOLS)]
        market = ex.market(symbol)
        price = Decimal(str(ex.fetch_ticker(symbol)["last"])) if i < len(SYMBOLS) else \
            out[i - len(SYMBOLS)].reference_price
        step = Decimal(str(market["precision"]["amount"]))
        qty = Decimal(math.ceil(Decimal(110) / price / step)) * step
        tick = Decimal(str(market["precision"]["price"]))
        stop, take = bracket_prices("LONG", price, Decimal("0.02"), Decimal("0.02"), tick)
        key = uuid.uuid4().hex
        out.append(TradeIntent(signal_id=f"bench-{key}", idempotency_key=f"bench:{key}",
                               symbol=symbol, side="LONG", quantity=qty, reference_price=price,
                               leverage=settings.leverage.leverage, stop_loss=stop,
                               take_profit=take, margin=qty * price / 20, strategy="bench"))
    return out


def start_extra_instance(settings: Settings) -> subprocess.Popen[bytes]:
    port = settings.services.execute_port + 1000
    env = {**os.environ, "PHOENIX__SERVICES__EXECUTE_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "nameko_services.runner", "execute"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("second execute instance did not become healthy")


def run(settings: Settings, n: int) -> dict[str, Any]:
    from shared.signed_rpc import cluster_proxy

    r: Any = redis.Redis.from_url(settings.redis_streams.url, decode_responses=True)
    intents = minimum_intents(settings, n)
    wanted = {i.signal_id for i in intents}
    last = r.xrevrange("trade:stream", count=1)
    since = last[0][0] if last else "0-0"
    sent: dict[str, float] = {}
    with Connection(settings.message_queue.amqp_uri) as conn:
        producer = conn.Producer()
        started = time.time()
        for it in intents:
            sent[it.signal_id] = time.time()
            producer.publish(it.wire(), exchange=kombu_exchange(SIGNALS_EXCHANGE),
                             routing_key=TRADE_KEY, delivery_mode=2, serializer="json")
    filled: dict[str, int] = {}
    deadline = time.monotonic() + 60 + n * 0.5
    while len(filled) < n and time.monotonic() < deadline:
        for entry_id, fields in r.xrange("trade:stream", min=f"({since}", count=1000):
            since = entry_id
            rec = Record.from_stream_fields(fields)
            if rec.type == "entry_filled" and rec.signal_id in wanted:
                filled[rec.signal_id] = rec.ts
        time.sleep(0.01)
    latencies = [filled[s] - sent[s] * 1000 for s in filled]
    elapsed = (max(filled.values()) / 1000 - started) if filled else float("nan")
    with cluster_proxy(settings.message_queue.amqp_uri, timeout=60) as rpc:
        rpc.execute.close_all()
    return {"intents": n, "filled": len(filled), "seconds": round(elapsed, 2),
            "intents_per_second": round(len(filled) / elapsed, 1) if filled else 0,
            "publish_to_entry_filled_ms": percentiles(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--instances", type=int, choices=(1, 2), default=1)
    args = parser.parse_args()
    settings = get_settings()
    extra = start_extra_instance(settings) if args.instances == 2 else None
    try:
        result = run(settings, args.n)
    finally:
        if extra is not None:
            extra.terminate()
            extra.wait(30)
    result["instances"] = args.instances
    print(json.dumps(result, indent=2, default=lambda v: round(v, 2)))


if __name__ == "__main__":
    main()
