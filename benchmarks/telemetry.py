"""Telemetry throughput and stream latency through the project's own writer.

Run by hand with Redis and Kafka up (the environment of ``scripts/up``), loopback only:

    .venv/bin/python -m benchmarks.telemetry --n 50000

1. Records/s: ``--n`` records through :class:`shared.telemetry.TelemetryWriter` (the one
   every service uses) into a Redis stream of the run's own (MAXLEN ~ as configured) and a
   Kafka topic of its own (producer settings from ``kafka``: acks=all, idempotent),
   timed until Kafka has acknowledged the last one. The writer never blocks and drops a
   record when librdkafka's local queue is full, so the generator keeps the queue under
   half full, and the drops are reported (they must be 0).
2. Stream latency: records written at ``--rate`` per second for ``--seconds``, read by a
   consumer group (XREADGROUP, block 1000 ms, ack per batch) in another thread;
   latency = read - written on the same clock, p50/p99.

The run's stream, group and topic are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from typing import Any

import redis
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from benchmarks.webhook_pipeline import percentiles
from shared.records import Record
from shared.settings import Settings, get_settings
from shared.telemetry import (
    KAFKA_BUFFER_MESSAGES,
    TelemetryWriter,
    kafka_producer_config,
    make_telemetry_redis,
)

DATA = {"symbol": "BTCUSDT", "equity": "10000.00", "exposure": 0.42, "drawdown": 0.013,
        "reasons": ["max_total_exposure"], "approved": False}


def _record(i: int) -> Record:
    return Record("bench_risk_check", {**DATA, "seq": i}, f"bench-{i}")


def throughput(settings: Settings, n: int, stream: str, topic: str) -> dict[str, Any]:
    producer = Producer(kafka_producer_config(settings))
    writer = TelemetryWriter(settings, make_telemetry_redis(settings), producer,
                             topics={stream: topic})
    high_water = KAFKA_BUFFER_MESSAGES // 2
    started = time.perf_counter()
    for i in range(n):
        if i % 500 == 0:
            while len(producer) > high_water:  # the writer's own loop serves the reports
                time.sleep(0.001)
        writer.emit(stream, _record(i))
    emitted = time.perf_counter() - started
    deadline = time.monotonic() + settings.kafka.delivery_timeout_s
    while len(producer) and time.monotonic() < deadline:
        writer.poll_deliveries(0.05)
    elapsed = time.perf_counter() - started
    writer.close()
    dropped = _dropped(writer)
    return {"records": n, "seconds": round(elapsed, 3),
            "records_per_s": round(n / elapsed), "emit_returned_per_s": round(n / emitted),
            "dropped": dropped, "unacknowledged": len(producer)}


def _dropped(writer: TelemetryWriter) -> dict[str, Any]:
    from shared.telemetry import TELEMETRY_DROPPED

    out: dict[str, Any] = {}
    for metric in TELEMETRY_DROPPED.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.value:
                out[f"{sample.labels['sink']}/{sample.labels['reason']}"] = sample.value
    return out


def latency(settings: Settings, stream: str, rate: float, seconds: float) -> dict[str, Any]:
    writer = TelemetryWriter(settings, make_telemetry_redis(settings), None)
    reader: Any = redis.Redis.from_url(settings.redis_streams.url, decode_responses=True)
    group = "bench_processors"
    reader.xgroup_create(stream, group, id="$", mkstream=True)
    samples: list[float] = []
    done = threading.Event()
    total = int(rate * seconds)

    def consume() -> None:
        while not done.is_set() or len(samples) < total:
            reply = reader.xreadgroup(group, "bench-1", {stream: ">"}, count=500, block=1000)
            now = time.perf_counter()
            for _, entries in reply or []:
                for _, fields in entries:
                    samples.append((now - json.loads(fields["data"])["sent"]) * 1000)
                reader.xack(stream, group, *[e[0] for e in entries])
            if done.is_set() and not reply:
                return

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    started = time.perf_counter()
    for i in range(total):
        pause = started + i / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        writer.emit(stream, Record("bench_tick", {"seq": i, "sent": time.perf_counter()}))
    done.set()
    thread.join(timeout=10)
    return {"offered_per_s": rate, "read": len(samples), "written": total,
            "latency_ms": percentiles(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000, help="records for the throughput")
    parser.add_argument("--rate", type=float, default=2000.0, help="records/s for latency")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    settings = get_settings()
    run = uuid.uuid4().hex[:8]
    stream, topic = f"bench:telemetry:{run}", f"bench_telemetry_{run}"
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    for future in admin.create_topics([NewTopic(topic, 3, 1)]).values():
        future.result(timeout=30)
    r: Any = redis.Redis.from_url(settings.redis_streams.url, decode_responses=True)
    try:
        result = {"throughput": throughput(settings, args.n, stream, topic),
                  "stream_latency": latency(settings, f"{stream}:latency", args.rate,
                                            args.seconds)}
    finally:
        r.delete(stream, f"{stream}:latency")
        for future in admin.delete_topics([topic]).values():
            try:
                future.result(timeout=30)
            except Exception as exc:  # noqa: BLE001 - cleanup is best effort
                print(f"topic {topic} not deleted: {exc}")
    print(json.dumps(result, indent=2, default=lambda v: round(v, 3)))


if __name__ == "__main__":
    main()
