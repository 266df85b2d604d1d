"""Readiness of a Nameko service: ``GET /ready`` answers 200 only when it can do its job.

``/health`` says the process is alive (cheap, never touches a dependency: a liveness probe
that restarts a pod because Redis is down would only add restarts to an outage).
``/ready`` runs the checks below and answers 200 ``{"ready": true, "checks": {...}}`` or
503 ``{"ready": false, "failing": [...], "checks": {...}}``; k8s readiness probes and the
compose healthchecks call it.

Checks (each a :class:`Check`, bounded by short timeouts so a probe answers within ~3 s):

* ``amqp``: this replica's consumer connection is open and every one of its consumers
  (queue consumers, RPC, events) holds a consumer tag on an open channel; then the broker,
  asked on a connection of the probe's own, counts at least one consumer on each queue;
* ``redis``: PING;
* ``market_data`` / ``account_state``: the feed's state is fresh
  (:meth:`shared.state.StateReader.freshness`) for the services that read it;
* ``database``: ``SELECT 1``;
* ``exchange``: the exchange circuit breaker is not open (execute).
"""

from __future__ import annotations

import json
import logging
import urllib.error
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from kombu import Connection
from nameko.extensions import DependencyProvider
from nameko.messaging import QueueConsumer
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from shared.redis_conn import redis_client
from shared.settings import Settings, get_settings
from shared.state import StateReader

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 1.5  # each dependency; a k8s probe times out after 5 s
AMQP = "amqp"
REDIS = "redis"
MARKET = "market_data"
ACCOUNT = "account_state"
DATABASE = "database"
EXCHANGE = "exchange"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""

    def wire(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class Readiness:
    checks: tuple[Check, ...]

    @property
    def ready(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failing(self) -> list[str]:
        return [c.name for c in self.checks if not c.ok]

    @property
    def status(self) -> int:
        return 200 if self.ready else 503

    def wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ready": self.ready,
                                "checks": {c.name: c.wire() for c in self.checks}}
        if not self.ready:
            body["failing"] = self.failing
        return body


def _guard(name: str, probe: Callable[[], Check]) -> Check:
    """A check that raised is a failed check, never a 500."""
    try:
        return probe()
    except Exception as exc:  # noqa: BLE001 - any failure of a dependency means not ready
        return Check(name, False, f"{type(exc).__name__}: {str(exc)[:200]}")


# ------------------------------------------------------------------------------ checks


def local_consumers(queue_consumers: Iterable[Any]) -> Check:
    """This replica's AMQP consumers: connected, each with a tag on an open channel.

    Reads nameko's ``QueueConsumer`` (kombu ``ConsumerMixin``): after a broker loss the old
    kombu consumers stay in ``_consumers`` with a dead channel until the mixin reconnects
    and replaces them, so a dead channel here means "not consuming right now".
    """
    queues: list[str] = []
    for qc in queue_consumers:
        if not qc._consumers_ready.ready():
            return Check(AMQP, False, "consumers not started (broker unreachable?)")
        for consumer in list(qc._consumers.values()):
            names = [q.name for q in consumer.queues]
            channel = consumer.channel
            connection = getattr(channel, "connection", None)
            if connection is None or not getattr(channel, "is_open", False) \
                    or not connection.connected:
                return Check(AMQP, False, f"connection lost ({', '.join(names)})")
            if not consumer._active_tags:
                return Check(AMQP, False, f"not consuming {', '.join(names)}")
            queues += names
    return Check(AMQP, True, ",".join(sorted(queues)))


def broker_consumers(amqp_uri: str, queues: Sequence[str],
                     timeout: float = PROBE_TIMEOUT_S) -> Check:
    """The broker's own count of consumers on each queue (a passive declare)."""
    with Connection(amqp_uri, connect_timeout=timeout,
                    transport_options={"max_retries": 0}) as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
        channel = conn.channel()
        try:
            for queue in queues:
                ok = channel.queue_declare(queue, passive=True)
                if int(ok.consumer_count) < 1:
                    return Check(AMQP, False, f"broker counts no consumer on {queue}")
        finally:
            channel.close()
    return Check(AMQP, True, f"{len(queues)} queue(s) consumed")


def amqp_check(queue_consumers: Sequence[Any], amqp_uri: str) -> Check:
    local = _guard(AMQP, lambda: local_consumers(queue_consumers))
    if not local.ok or not local.detail:
        return local
    remote = _guard(AMQP, lambda: broker_consumers(amqp_uri, local.detail.split(",")))
    return local if remote.ok else remote


def redis_check(client: redis.Redis) -> Check:
    return _guard(REDIS, lambda: Check(REDIS, bool(client.ping()), "PONG"))


def freshness_checks(reader: StateReader, *, account: bool) -> list[Check]:
    """The feed's market (and account) state younger than ``feed.max_staleness_seconds``."""
    try:
        fresh = reader.freshness()
    except Exception as exc:  # noqa: BLE001
        why = f"{type(exc).__name__}: {str(exc)[:200]}"
        return [Check(MARKET, False, why), *([Check(ACCOUNT, False, why)] if account else [])]
    limit = fresh["max_staleness_ms"]
    ages = fresh["price_age_ms"] or {}
    oldest = max(ages.values()) if ages else None
    checks = [Check(MARKET, bool(fresh["market_fresh"]),
                    f"oldest price {oldest} ms (max {limit} ms)" if oldest is not None
                    else "no prices from the feed")]
    if account:
        age = fresh["account_heartbeat_age_ms"]
        checks.append(Check(ACCOUNT, bool(fresh["account_fresh"]),
                            f"account heartbeat {age} ms ago (max {limit} ms)"
                            if age is not None else "no account state from the feed"))
    return checks


def database_check(engine: Engine) -> Check:
    def probe() -> Check:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return Check(DATABASE, True, engine.dialect.name)
    return _guard(DATABASE, probe)


def breaker_check(state: str) -> Check:
    return Check(EXCHANGE, state != "open", f"circuit breaker {state}")


def probe_engine(settings: Settings) -> Engine:
    """A small engine of the probe's own (the services' pools stay for their work)."""
    url = settings.database.resolved_url()
    if url.startswith("sqlite"):
        return create_engine(url, connect_args={"timeout": PROBE_TIMEOUT_S})
    return create_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True,
                         pool_timeout=PROBE_TIMEOUT_S,
                         connect_args={"connect_timeout": max(1, int(PROBE_TIMEOUT_S))})


def probe_redis(settings: Settings) -> redis.Redis:
    return redis_client(settings.redis_streams, decode_responses=True,
                        socket_timeout=PROBE_TIMEOUT_S,
                        socket_connect_timeout=PROBE_TIMEOUT_S)


# -------------------------------------------------------------------------- the probe


@dataclass
class ReadinessChecks:
    """What one service checks."""

    settings: Settings
    amqp_uri: str
    queue_consumers: Sequence[Any]
    redis: redis.Redis
    market: bool = False
    account: bool = False
    database: Engine | None = None

    def run(self, extra: Iterable[Check] = ()) -> Readiness:
        """Every check in turn; ``extra``: the service's own (e.g. execute's breaker)."""
        checks = [amqp_check(self.queue_consumers, self.amqp_uri), redis_check(self.redis)]
        if self.market or self.account:
            checks += freshness_checks(StateReader(self.redis, self.settings),
                                       account=self.account)
        if self.database is not None:
            checks.append(database_check(self.database))
        checks += list(extra)
        return Readiness(tuple(checks))


class ReadinessProbe(DependencyProvider):
    """``readiness.run()`` gives this service's :class:`Readiness`.

    ``market``/``account``: the service reads the feed's market/account state;
    ``database``: it writes the database.
    """

    def __init__(self, *, market: bool = False, account: bool = False,
                 database: bool = False) -> None:
        self.market = market
        self.account = account
        self.database = database

    def setup(self) -> None:
        settings = get_settings()
        consumers = [ext for ext in self.container.subextensions
                     if isinstance(ext, QueueConsumer)]
        self.checks = ReadinessChecks(
            settings, self.container.config["AMQP_URI"], consumers, probe_redis(settings),
            market=self.market, account=self.account,
            database=probe_engine(settings) if self.database else None)

    def stop(self) -> None:
        if self.checks.database is not None:
            self.checks.database.dispose()
        self.checks.redis.close()

    def kill(self) -> None:
        self.stop()

    def get_dependency(self, worker_ctx: Any) -> ReadinessChecks:
        return self.checks


def not_ready_reason(exc: urllib.error.HTTPError) -> str:
    """What a 503 from a ``/ready`` names as failing (``not ready: redis, consumers``);
    empty when the body says nothing usable (the caller then shows the status code)."""
    try:
        parsed = json.loads(exc.read(4096))
    except (OSError, ValueError):
        return ""
    if isinstance(parsed, dict) and isinstance(parsed.get("failing"), list):
        return "not ready: " + ", ".join(map(str, parsed["failing"]))
    return ""
