"""Failover of the HA lab under load: ``python -m benchmarks.failover`` (lab up with
``scripts/up --ha``).

A steady stream of TradingView alerts (``--rate``/s, unique ids, the lab's webhook secret)
goes through nginx (127.0.0.1:8080/webhook) for the whole run and is never re-sent by the
client: an answer of 5xx or a failed connection counts as such. After a quiet baseline, the
faults come one after the other, ``--gap`` seconds apart:

* ``kill -9`` of one instance of brain, risk, execute and notify (the pid from supervisord;
  the instance leading a duty when one does, so the leader's replacement is measured);
* ``kill -9`` of one RabbitMQ node (its process group: the start script and the Erlang VM;
  lab-1, the first node of every client's failover list, so most connections are on it);
* ``kill -9`` of the Redis master Sentinel names.

Per fault (alerts sent from that fault until the next): alerts lost (accepted but with no
terminal outcome on the signal/risk/trade streams, as scripts/chaos_checks.py reads them,
nor in their Kafka copies),
5xx answered through nginx, seconds until the killed process is back (supervisord RUNNING
with a new pid, and /health 200 for a service, its AMQP port for a RabbitMQ node, PING as
Sentinel's replica or master for Redis), seconds until a leader duty it held resumes on
another instance (``phoenix95_leader{duty}`` = 1 there) and, for Redis, until Sentinel names
a new master. Prints a markdown table and writes JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import lab, lib, supervise
from scripts.chaos_checks import terminal
from scripts.chaos_load import Recorder, make_alert
from shared.names import TELEMETRY_TOPIC_OF
from shared.records import Record
from shared.settings import Settings, get_settings

SERVICES = ("brain", "risk", "execute", "notify")
SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "ADAUSDT", "DOGEUSDT")
BACK_TIMEOUT_S = 90.0
LEADER = re.compile(r'^phoenix95_leader\{duty="([^"]+)"\}\s+([0-9.]+)', re.M)


@dataclass
class Shot:
    alert_id: str
    at: float
    status: str = "pending"  # HTTP status, or "error"
    signal_id: str | None = None


@dataclass
class FaultResult:
    fault: str
    target: str
    at: float = 0.0
    back_s: float | None = None
    leader_s: dict[str, float | None] = field(default_factory=dict)
    new_master_s: float | None = None
    sent: int = 0
    accepted: int = 0
    lost: list[str] = field(default_factory=list)
    http_5xx: int = 0
    errors: int = 0
    other: dict[str, int] = field(default_factory=dict)
    outcome_only_in_kafka: int = 0  # its Redis record dropped (telemetry never blocks)


class Load:
    """``rate`` alerts per second through nginx from a pool of senders, until stopped."""

    def __init__(self, settings: Settings, url: str, rate: float) -> None:
        self.settings, self.url, self.rate = settings, url, rate
        self.strategy = f"failover-{uuid.uuid4().hex[:8]}"
        self.shots: list[Shot] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=64)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)

    def _run(self) -> None:
        gap, n, start = 1.0 / self.rate, 0, time.monotonic()
        while not self._stop.is_set():
            shot = Shot(f"failover-{uuid.uuid4().hex}", time.monotonic())
            self.shots.append(shot)
            self._pool.submit(self._send, shot, n)
            n += 1
            delay = start + n * gap - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)

    def _send(self, shot: Shot, n: int) -> None:
        # one in four could trade (one position per symbol: the others are refused by risk),
        # three in four are refused by brain's confidence gate: every one has an outcome
        body = make_alert(self.settings, SYMBOLS[n % len(SYMBOLS)], ("buy", "sell")[n % 2],
                          0.8 if n % 4 == 0 else 0.3, self.strategy, shot.alert_id)
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                shot.status = str(resp.status)
                answer = json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            shot.status = str(err.code)
            return
        except (OSError, ValueError):
            shot.status = "error"
            return
        if answer.get("signal_id"):
            shot.signal_id = str(answer["signal_id"])


def wait_for(probe: Callable[[], bool], timeout: float = BACK_TIMEOUT_S) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if probe():
                return time.monotonic() - start
        except Exception:  # noqa: BLE001 - a probe failing means "not yet"
            pass
        time.sleep(0.1)
    return None


def leads(url: str) -> set[str]:
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return set()
    return {duty for duty, value in LEADER.findall(text) if float(value) == 1.0}


def instance_urls(settings: Settings, service: str) -> dict[str, str]:
    return {lab.instance_name(service, i):
            f"http://{settings.services.host_of(service)}:{lab.instance_port(settings, service, i)}"
            for i in (1, 2)}


def kill_program(run_dir: Path, name: str, group: bool = False) -> int:
    info = supervise.programs(run_dir)[name]
    if not info.pid:
        raise RuntimeError(f"{name} is not running")
    if group:
        os.killpg(info.pid, signal.SIGKILL)  # supervisord gives each program its own group
    else:
        os.kill(info.pid, signal.SIGKILL)
    return info.pid


def respawned(run_dir: Path, name: str, old_pid: int) -> bool:
    info = supervise.programs(run_dir)[name]
    return info.state == "RUNNING" and info.pid not in (0, old_pid)


def kill_service(settings: Settings, run_dir: Path, service: str, result: FaultResult) -> None:
    urls = instance_urls(settings, service)
    held = {name: leads(url) for name, url in urls.items()}
    # the leader when there is one: its duties must move to the other instance
    victim = max(urls, key=lambda name: (len(held[name]), name == service))
    survivor = next(name for name in urls if name != victim)
    result.target = victim
    result.at = time.monotonic()
    pid = kill_program(run_dir, victim)
    start = time.monotonic()
    duties = held[victim]
    resumed: dict[str, float | None] = {d: None for d in duties}
    back = None
    while time.monotonic() - start < BACK_TIMEOUT_S and (back is None or None in
                                                          resumed.values()):
        if back is None and respawned(run_dir, victim, pid) and \
                lib.http_ok(urls[victim] + "/health", timeout=1)[0]:
            back = time.monotonic() - start
        if None in resumed.values():
            # the survivor, or the restarted victim if it wins the expired lease first
            now_led = leads(urls[survivor]) | leads(urls[victim])
            for duty in duties:
                if resumed[duty] is None and duty in now_led:
                    resumed[duty] = time.monotonic() - start
        time.sleep(0.1)
    result.back_s = back
    result.leader_s = resumed


def kill_rabbit(settings: Settings, run_dir: Path, result: FaultResult) -> None:
    node = lab.RABBIT_NODES[0]
    name = f"rabbit-{node.name}"
    result.target = node.node
    result.at = time.monotonic()
    pid = kill_program(run_dir, name, group=True)
    result.back_s = wait_for(lambda: respawned(run_dir, name, pid)
                             and lib.tcp_open(lab.LOOPBACK, node.port))


def kill_redis_master(settings: Settings, run_dir: Path, result: FaultResult) -> None:
    master = lab.master_address(settings)
    if master is None:
        raise RuntimeError("no Sentinel names a master")
    name = f"redis-{master[1]}"
    result.target = f"{name} (master)"
    result.at = time.monotonic()
    pid = kill_program(run_dir, name)
    start = time.monotonic()
    result.new_master_s = wait_for(
        lambda: (lab.master_address(settings) or master) != master)

    def back() -> bool:
        import redis

        if not respawned(run_dir, name, pid):
            return False
        client = redis.Redis(host=lab.LOOPBACK, port=master[1], socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    waited = wait_for(back)
    result.back_s = None if waited is None else time.monotonic() - start


def account(results: list[FaultResult], shots: list[Shot],
            outcomes: dict[str, list[str]], redis_missed: set[str]) -> None:
    """Each alert belongs to the last fault injected before it was sent."""
    for shot in shots:
        owner = None
        for res in results:
            if res.at <= shot.at:
                owner = res
        if owner is None:
            continue
        owner.sent += 1
        if shot.status.startswith("5"):
            owner.http_5xx += 1
        elif shot.status == "error":
            owner.errors += 1
        elif shot.status not in ("200", "202"):
            owner.other[shot.status] = owner.other.get(shot.status, 0) + 1
        if shot.signal_id:
            owner.accepted += 1
            if not outcomes.get(shot.signal_id):
                owner.lost.append(shot.signal_id)
            elif shot.signal_id in redis_missed:
                owner.outcome_only_in_kafka += 1


def kafka_records(settings: Settings, ids: set[str],
                  timeout_s: float = 120.0) -> dict[str, list[tuple[str, Record]]]:
    """The same telemetry records from Kafka, where a record Redis missed still is: the
    telemetry sink drops a Redis write rather than block trading (shared/telemetry.py), so
    a Redis failover costs records, not signals. Reads every partition from its beginning
    up to its end as of now."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                         "group.id": f"failover-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, **settings.kafka.security_config()})
    topics = consumer.list_topics(timeout=10).topics
    parts = [TopicPartition(topic, part, OFFSET_BEGINNING)
             for topic in sorted(set(TELEMETRY_TOPIC_OF.values()))
             for part in topics[topic].partitions]
    ends = {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=10)[1]
            for tp in parts}
    pending = {key for key, end in ends.items() if end > 0}
    consumer.assign(parts)  # assigned, not subscribed: no group rebalance to wait for
    found: dict[str, list[tuple[str, Record]]] = {sid: [] for sid in ids}
    deadline = time.monotonic() + timeout_s
    try:
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            key = (str(msg.topic()), int(msg.partition() or 0))
            if int(msg.offset() or 0) + 1 >= ends.get(key, 0):
                pending.discard(key)
            try:
                rec = Record.from_kafka_value(msg.value() or b"")
            except (ValueError, KeyError):
                continue
            if rec.signal_id in found:
                found[rec.signal_id].append((key[0], rec))
    finally:
        consumer.close()
    return found


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(results: list[FaultResult]) -> str:
    lines = ["| fault | target | sent | accepted | lost | 5xx | conn. errors | back (s) "
             "| leader resumed (s) | new Redis master (s) | outcome in Kafka only |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        leader = ", ".join(f"{d} {fmt(s)}" for d, s in r.leader_s.items()) or "-"
        lines.append(f"| {r.fault} | {r.target} | {r.sent} | {r.accepted} | {len(r.lost)} | "
                     f"{r.http_5xx} | {r.errors} | {fmt(r.back_s)} | {leader} | "
                     f"{fmt(r.new_master_s)} | {r.outcome_only_in_kafka} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20.0, help="alerts per second")
    parser.add_argument("--baseline", type=float, default=15.0, help="seconds before faults")
    parser.add_argument("--gap", type=float, default=25.0, help="seconds between faults")
    parser.add_argument("--drain", type=float, default=60.0,
                        help="seconds to wait for the last outcomes")
    parser.add_argument("--faults", default=",".join([*SERVICES, "rabbitmq", "redis"]),
                        help="comma-separated subset of brain,risk,execute,notify,rabbitmq,redis")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    lab.apply_env()
    get_settings.cache_clear()
    settings = get_settings()
    run_dir = settings.services.run_path()
    if not supervise.answering(run_dir):
        print(f"error: the lab is not running ({run_dir}); start it with scripts/up --ha",
              file=sys.stderr)
        return 2
    from shared.redis_conn import redis_client

    recorder = Recorder("", client=redis_client(settings.redis_streams, decode_responses=True,
                                                socket_timeout=5, socket_connect_timeout=2))
    recorder.start()
    load = Load(settings, f"http://{lab.LOOPBACK}:{lab.NGINX_PORT}/webhook", args.rate)
    results = [FaultResult("none (baseline)", "-", at=time.monotonic())]
    load.start()
    time.sleep(args.baseline)
    for fault in [f for f in args.faults.split(",") if f]:
        res = FaultResult(f"kill -9 {fault}", "")
        results.append(res)
        if fault in SERVICES:
            kill_service(settings, run_dir, fault, res)
        elif fault == "rabbitmq":
            kill_rabbit(settings, run_dir, res)
        elif fault == "redis":
            kill_redis_master(settings, run_dir, res)
        else:
            raise SystemExit(f"unknown fault {fault}")
        print(f"{res.fault} ({res.target}): back {fmt(res.back_s)} s, leader {res.leader_s}, "
              f"new master {fmt(res.new_master_s)} s", flush=True)
        remaining = res.at + args.gap - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
    load.stop()
    ids = {s.signal_id for s in load.shots if s.signal_id}
    redis_missed: set[str] = set()
    deadline = time.monotonic() + args.drain
    while True:
        outcomes = {sid: terminal(recs) for sid, recs in recorder.of(ids).items()}
        if all(outcomes.values()) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    recorder.stop()
    in_kafka = kafka_records(settings, ids)
    for sid, recs in in_kafka.items():
        if not outcomes.get(sid) and terminal(recs):
            outcomes[sid] = terminal(recs)
            redis_missed.add(sid)
    account(results, load.shots, outcomes, redis_missed)
    print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(
            {"rate": args.rate, "gap_s": args.gap, "results": [asdict(r) for r in results]},
            indent=2), encoding="utf-8")
    return 0 if all(not r.lost and not r.http_5xx for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
