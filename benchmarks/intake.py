"""Intake throughput of the running system: webhook -> 202 -> every accepted signal analysed.

Run by hand against a system started with ``scripts/up`` (same environment), loopback only:

    .venv/bin/python -m benchmarks.intake --load tradeable --symbols 5 --connections 16
    .venv/bin/python -m benchmarks.intake --load refused                # gate 1 refuses
    .venv/bin/python -m benchmarks.intake --load refused --rate 1000   # offered req/s

The generator is one asyncio loop on raw HTTP/1.1 keep-alive connections (no HTTP
library, no threads), so it costs a fraction of a core; it reports its own CPU share.
Every run is bounded: ``--n`` unique alerts and ``--timeout`` seconds. Closed loop by
default (each connection sends its next alert when the previous one is answered); with
``--rate`` the alerts are sent on a fixed schedule and each latency counts from its
scheduled time, so a stall is not hidden by the generator waiting (coordinated omission).

``tradeable`` alerts pass gate 1 (confidence 0.9) and go on to the model and, when it
approves, ``risk.check``; ``refused`` alerts (confidence 0.1) are refused at gate 1 by the
analysis. A signal counts as analysed when brain's decision event for it
(``signal_accepted`` / ``signal_rejected``, one per entry) reaches the benchmark's own
queue on ``brain.events``: not from signal:stream, which is capped at 10,000 records and
whose telemetry records are dropped, by design, when Redis answers late. lost = accepted
- analysed.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kombu import Connection, Queue, binding
from nameko.standalone.events import get_event_exchange

from benchmarks.webhook_pipeline import peak_rss, percentiles
from shared.names import BRAIN, EVT_SIGNAL_ACCEPTED, EVT_SIGNAL_REJECTED
from shared.settings import Settings, get_settings

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "ADAUSDT", "DOGEUSDT")
CONFIDENCE = {"tradeable": 0.9, "refused": 0.1}


def bodies(settings: Settings, load: str, n: int, symbols: int) -> list[bytes]:
    secret = settings.security.webhook_secret.get_secret_value()
    run = uuid.uuid4().hex[:8]
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    cycle = itertools.cycle(SYMBOLS[:symbols])
    return [json.dumps({"secret": secret, "ticker": next(cycle), "action": "buy",
                        "confidence": CONFIDENCE[load], "strategy": f"bench-{run}",
                        "id": f"bench-{run}-{i}", "time": stamp}).encode()
            for i in range(n)]


class DecisionFollower(threading.Thread):
    """Collects the signal ids of brain's decisions (its ``signal_accepted`` and
    ``signal_rejected`` events: exactly one per analysed entry) from the moment it starts,
    on a queue of its own bound to ``brain.events`` (exclusive, deleted with it)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self._conn = Connection(settings.message_queue.amqp_uri)
        exchange = get_event_exchange(BRAIN, {})
        self._queue = Queue(f"bench-intake-{uuid.uuid4().hex[:8]}", exclusive=True,
                            auto_delete=True, bindings=[
                                binding(exchange, routing_key=EVT_SIGNAL_ACCEPTED),
                                binding(exchange, routing_key=EVT_SIGNAL_REJECTED)])
        self._queue(self._conn.default_channel).declare()
        self.decided: dict[str, float] = {}  # signal id -> when we saw it (monotonic)
        self._done = threading.Event()

    def _on_event(self, body: Any, message: Any) -> None:
        if isinstance(body, dict) and body.get("signal_id"):
            self.decided.setdefault(str(body["signal_id"]), time.monotonic())
        message.ack()

    def run(self) -> None:
        with self._conn.Consumer([self._queue], callbacks=[self._on_event], prefetch_count=500):
            while not self._done.is_set():
                try:
                    self._conn.drain_events(timeout=0.2)
                except TimeoutError:
                    continue

    def finish(self) -> None:
        self._done.set()
        self.join(timeout=2)
        self._conn.release()


async def _post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes,
                body: bytes) -> tuple[int, bytes]:
    writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
    status_line = await reader.readuntil(b"\r\n")
    length = 0
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    payload = await reader.readexactly(length)
    return int(status_line.split()[1]), payload


async def generate(url: str, payloads: list[bytes], connections: int, rate: float,
                   deadline: float) -> tuple[list[float], dict[int, int], list[str], float]:
    """(202 latencies ms, status counts, accepted signal ids, seconds)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("benchmarks.intake sends to loopback only")
    head = (f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: text/plain\r\nContent-Length: ").encode()
    todo: Iterator[tuple[int, bytes]] = iter(enumerate(payloads))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    accepted: list[str] = []
    started = time.perf_counter()

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for i, body in todo:
                due = started + i / rate if rate else time.perf_counter()
                if rate and (pause := due - time.perf_counter()) > 0:
                    await asyncio.sleep(pause)
                if time.perf_counter() > deadline:
                    return
                try:
                    status, reply = await _post(reader, writer, head, body)
                except (OSError, asyncio.IncompleteReadError):
                    statuses[0] = statuses.get(0, 0) + 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                statuses[status] = statuses.get(status, 0) + 1
                if status == 202:
                    latencies.append((time.perf_counter() - due) * 1000)
                    accepted.append(json.loads(reply)["signal_id"])
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return latencies, statuses, accepted, time.perf_counter() - started


def cpu_seconds(settings: Settings) -> dict[str, float]:
    """CPU time (user + system) so far of every program the run folder's supervisord runs."""
    from scripts import supervise

    out: dict[str, float] = {}
    run_dir = settings.services.run_path()
    if not supervise.answering(run_dir):
        return out
    tick = os.sysconf("SC_CLK_TCK")
    for name, info in supervise.programs(run_dir).items():
        try:
            fields = Path(f"/proc/{info.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return out


def run_once(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    payloads = bodies(settings, args.load, args.n, args.symbols)
    procs0 = cpu_seconds(settings)
    follower = DecisionFollower(settings)
    follower.start()
    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    latencies, statuses, accepted, seconds = asyncio.run(generate(
        settings.services.url_of("brain") + "/webhook", payloads, args.connections,
        args.rate, time.perf_counter() + args.timeout))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    sent_done = time.monotonic()
    wait_until = sent_done + args.timeout
    while time.monotonic() < wait_until and any(s not in follower.decided for s in accepted):
        time.sleep(0.05)
    follower.finish()
    analysed = [s for s in accepted if s in follower.decided]
    last = max((follower.decided[s] for s in analysed), default=sent_done)
    gen_cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    procs1 = cpu_seconds(settings)
    per_alert = {name: round((procs1[name] - procs0[name]) * 1000 / max(len(analysed), 1), 2)
                 for name in procs1 if name in procs0}
    return {
        "sent": sum(statuses.values()), "statuses": statuses,
        "accepted": len(accepted), "accepted_per_s": round(len(accepted) / seconds, 1),
        "offered_per_s": args.rate or None,
        "p202_ms": percentiles(latencies),
        "all_analysed_after_s": round(last - wall0, 2),
        "analysed_per_s": round(len(analysed) / max(last - wall0, 1e-9), 1),
        "lost": len(accepted) - len(analysed),
        "generator_cpu_share": round(gen_cpu / max(sent_done - wall0, 1e-9), 3),
        # CPU ms each program spent per analysed alert over the run (load-independent)
        "cpu_ms_per_alert": per_alert,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", choices=sorted(CONFIDENCE), default="tradeable")
    parser.add_argument("--n", type=int, default=2000, help="unique alerts a run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--symbols", type=int, choices=range(1, 6), default=1)
    parser.add_argument("--rate", type=float, default=0.0, help="offered req/s (0: closed)")
    parser.add_argument("--runs", type=int, default=3, help="the median run is reported")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds, per phase")
    args = parser.parse_args()
    settings = get_settings()
    runs = [run_once(settings, args) for _ in range(args.runs)]
    median = statistics.median_low(r["accepted_per_s"] for r in runs)
    result = {"load": args.load, "connections": args.connections, "symbols": args.symbols,
              "median": next(r for r in runs if r["accepted_per_s"] == median),
              "runs_accepted_per_s": [r["accepted_per_s"] for r in runs],
              "lost_total": sum(r["lost"] for r in runs),
              "peak_rss_mb": peak_rss(settings)}
    print(json.dumps(result, indent=2, default=lambda v: round(v, 2)))


if __name__ == "__main__":
    main()
