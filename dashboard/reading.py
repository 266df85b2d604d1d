"""Everything the dashboard reads: bounded Redis stream reads, the feed's account state,
the services' ``/ready``, and the RPC and lag pollers (each in one daemon thread, so a slow
broker never blocks a page render). Nothing here writes anywhere; the shaping of what was
read is in :mod:`dashboard.transform` and :mod:`dashboard.candles`.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis
from pydantic import ValidationError

from dashboard.candles import CandleBook
from dashboard.rows import Position, ServiceHealth, StreamEntry, describe_error
from shared import names
from shared.health import not_ready_reason
from shared.lag import Lag
from shared.records import Record
from shared.redis_conn import redis_client
from shared.settings import RedisStreamsSettings, ServicesSettings, Settings
from shared.state import Account, Price, StateReader


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------- streams


class StreamReader:
    """Bounded, read-only view of the telemetry streams (oldest first in every result)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    @classmethod
    def from_settings(cls, settings: RedisStreamsSettings, timeout: float = 2.0) -> StreamReader:
        client = redis_client(settings, socket_timeout=timeout, socket_connect_timeout=timeout)
        return cls(client)

    def read(self, stream: str, count: int) -> list[StreamEntry]:
        """The newest ``count`` entries of ``stream``, oldest first; undecodable ones skipped."""
        raw = self._client.xrevrange(stream, count=count)
        return self._decode(reversed(raw))  # type: ignore[arg-type]

    @staticmethod
    def _decode(raw: Iterable[tuple[Any, Any]]) -> list[StreamEntry]:
        entries: list[StreamEntry] = []
        for entry_id, fields in raw:
            try:
                record = Record.from_stream_fields(fields)
            except (ValueError, TypeError):
                continue
            entries.append(StreamEntry(_text(entry_id), record))
        return entries

    def read_after(self, stream: str, last_id: str, count: int) -> list[StreamEntry]:
        """Up to ``count`` entries newer than ``last_id``, oldest first.

        If more than ``count`` arrived, the newest ``count`` are returned (a gap beats lag).
        """
        raw = self._client.xrevrange(stream, min="(" + last_id, count=count)
        return self._decode(reversed(raw))  # type: ignore[arg-type]

    def market(self, count: int = 2000) -> list[StreamEntry]:
        return self.read(names.MARKET_STREAM, count)

    def signals(self, count: int = 500) -> list[StreamEntry]:
        return self.read(names.SIGNAL_STREAM, count)

    def risk(self, count: int = 500) -> list[StreamEntry]:
        return self.read(names.RISK_STREAM, count)

    def trades(self, count: int = 500) -> list[StreamEntry]:
        return self.read(names.TRADE_STREAM, count)


def refresh_candles(book: CandleBook, reader: StreamReader, first_count: int = 10_000,
                    step_count: int = 5_000) -> None:
    """Feed ``book`` what is new on market:stream since its last entry (bounded reads)."""
    if book.last_id is None:
        book.ingest(reader.market(first_count))
    else:
        book.ingest(reader.read_after(names.MARKET_STREAM, book.last_id, step_count))


@dataclass
class Dashboard:
    """Everything one refresh of the page shows, read in one go."""

    signals: list[StreamEntry] = field(default_factory=list)
    risk: list[StreamEntry] = field(default_factory=list)
    trades: list[StreamEntry] = field(default_factory=list)
    error: str | None = None


def read_dashboard(reader: StreamReader, event_count: int = 500) -> Dashboard:
    """Read the event streams; a Redis failure becomes ``error`` instead of an exception."""
    try:
        return Dashboard(
            signals=reader.signals(event_count),
            risk=reader.risk(event_count),
            trades=reader.trades(event_count),
        )
    except redis.RedisError as exc:
        return Dashboard(error=f"Redis unavailable: {describe_error(exc)}")


# --------------------------------------------------------------------------- account state


def state_reader(settings: Settings, timeout: float = 2.0) -> StateReader:
    """The feed's market and account state, read as every service reads it."""
    client = redis_client(settings.redis_streams, decode_responses=True,
                          socket_timeout=timeout, socket_connect_timeout=timeout)
    return StateReader(client, settings)


@dataclass(frozen=True)
class AccountRead:
    """The feed's account state (stale or not: ``as_of_ms`` says how old) and its prices."""

    account: Account | None
    prices: dict[str, Price] = field(default_factory=dict)
    error: str | None = None

    @property
    def age_s(self) -> float | None:
        if self.account is None or not self.account.as_of_ms:
            return None
        return max(0.0, time.time() - self.account.as_of_ms / 1000)


def read_account(state: StateReader) -> AccountRead:
    """The account state even when stale (the page says how old); errors become ``error``."""
    try:
        return AccountRead(state.account(fresh=False), state.prices())
    except (redis.RedisError, ValidationError) as exc:
        return AccountRead(None, error=f"account state unreadable: {describe_error(exc)}")


# --------------------------------------------------------------------------- health


def check_one(service: str, url: str, timeout: float = 1.0) -> ServiceHealth:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read(2048)
            latency = (time.perf_counter() - started) * 1000
            status = str(resp.status)
            try:
                parsed = json.loads(body)
                if isinstance(parsed, dict) and "ready" in parsed:
                    status = "ready" if parsed["ready"] else "not ready"
                elif isinstance(parsed, dict) and "status" in parsed:
                    status = str(parsed["status"])
            except ValueError:
                pass
            return ServiceHealth(service, url, 200 <= resp.status < 300, status, latency)
    except urllib.error.HTTPError as exc:
        latency = (time.perf_counter() - started) * 1000
        return ServiceHealth(service, url, False, not_ready_reason(exc) or f"HTTP {exc.code}",
                             latency)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return ServiceHealth(service, url, False, f"down ({reason})")


def check_health(urls: dict[str, str], timeout: float = 1.0) -> list[ServiceHealth]:
    """GET every ``/health`` URL in parallel; the whole check takes about ``timeout``."""
    if not urls:
        return []
    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        futures = [pool.submit(check_one, s, u, timeout) for s, u in urls.items()]
        return [f.result() for f in futures]


def health_urls(host: str, ports: dict[str, int]) -> dict[str, str]:
    return {service: f"http://{host}:{port}/health" for service, port in ports.items()}


def ready_urls(services: ServicesSettings, names_: Iterable[str]) -> dict[str, str]:
    """Each service's ``/ready`` at its advertised address (``services.hosts``)."""
    return {name: f"{services.url_of(name)}/ready" for name in names_}


# --------------------------------------------------------------------------- RPC


@dataclass(frozen=True)
class RpcSnapshot:
    """What the last RPC poll returned; errors are strings meant for the page."""

    positions: list[Position] | None = None
    positions_error: str | None = None
    risk_status: dict[str, Any] | None = None
    risk_error: str | None = None
    fetched_at: float = 0.0
    trades: list[dict[str, Any]] | None = None
    trades_error: str | None = None

    @property
    def age_s(self) -> float:
        return time.time() - self.fetched_at if self.fetched_at else float("inf")


def fetch_rpc_snapshot(amqp_uri: str, timeout: float) -> RpcSnapshot:
    """Call ``execute.positions()`` and ``risk.status()`` through one standalone proxy.

    Blocking; run it in a plain thread. Never raises: errors land in the snapshot.
    """
    from shared.signed_rpc import cluster_proxy  # heavy import, only where used

    positions: list[Position] | None = None
    risk_status: dict[str, Any] | None = None
    pos_err: str | None = None
    risk_err: str | None = None
    trades: list[dict[str, Any]] | None = None
    trades_err: str | None = None
    try:
        # reply queue named after this process (its broker user reads only its own)
        with cluster_proxy(amqp_uri, timeout=timeout) as rpc:
            try:
                raw = rpc.execute.positions()
                positions = [Position.from_mapping(p) for p in raw or []]
            except Exception as exc:  # noqa: BLE001 - shown on the page
                pos_err = describe_error(exc)
            try:
                status = rpc.risk.status()
                risk_status = dict(status) if isinstance(status, dict) else {"status": status}
            except Exception as exc:  # noqa: BLE001 - shown on the page
                risk_err = describe_error(exc)
            try:
                trades = [dict(t) for t in rpc.execute.trades(200) or []]
            except Exception as exc:  # noqa: BLE001 - shown on the page
                trades_err = describe_error(exc)
    except Exception as exc:  # noqa: BLE001 - broker unreachable etc.
        message = "RPC unreachable: " + describe_error(exc)
        pos_err = pos_err or message
        risk_err = risk_err or message
        trades_err = trades_err or message
    return RpcSnapshot(positions, pos_err, risk_status, risk_err, time.time(), trades,
                       trades_err)


class RpcPoller:
    """Polls the RPC snapshot in one daemon thread so page renders never block on AMQP.

    A hung or slow broker therefore costs at most one thread, not one per refresh.
    """

    def __init__(
        self,
        amqp_uri: str,
        timeout: float = 2.0,
        interval: float = 3.0,
        fetch: Callable[[str, float], RpcSnapshot] = fetch_rpc_snapshot,
    ) -> None:
        self._amqp_uri = amqp_uri
        self._timeout = timeout
        self._interval = interval
        self._fetch = fetch
        self._lock = threading.Lock()
        self._snapshot: RpcSnapshot | None = None
        self._first = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-rpc", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            snapshot = self._fetch(self._amqp_uri, self._timeout)
            with self._lock:
                self._snapshot = snapshot
            self._first.set()
            self._stop.wait(self._interval)

    def latest(self, wait: float = 0.0) -> RpcSnapshot | None:
        """The newest snapshot; waits up to ``wait`` seconds for the first one."""
        if wait > 0:
            self._first.wait(wait)
        with self._lock:
            return self._snapshot

    def stop(self) -> None:
        self._stop.set()


# --------------------------------------------------------------------------- lag


class LagPoller:
    """Consumer lag of every queue, stream group and topic, probed in one daemon thread."""

    def __init__(self, probe: Callable[[], list[Lag]], interval: float = 10.0) -> None:
        self._probe = probe
        self._interval = interval
        self._lock = threading.Lock()
        self._rows: list[Lag] = []
        self._at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-lag", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rows = self._probe()
            except Exception as exc:  # noqa: BLE001 - a probe bug must not kill the thread
                rows = [Lag("probe", "all", "-", None, error=describe_error(exc))]
            with self._lock:
                self._rows, self._at = rows, time.time()
            self._stop.wait(self._interval)

    def latest(self) -> tuple[list[Lag], float]:
        with self._lock:
            return list(self._rows), self._at

    def stop(self) -> None:
        self._stop.set()
