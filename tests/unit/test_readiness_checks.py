"""shared.health: typed readiness results and each check, on fakes at the boundaries (the
real broker/Redis/nameko run is in tests/integration/test_readiness.py); scripts/status
showing readiness."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import create_engine

from scripts import status, supervise
from shared.health import (
    Check,
    Readiness,
    breaker_check,
    database_check,
    freshness_checks,
    local_consumers,
)
from tests.support.http_stub import serving

# ------------------------------------------------------------------------ the result


def test_ready_when_every_check_passes() -> None:
    result = Readiness((Check("amqp", True, "q"), Check("redis", True, "PONG")))

    assert result.ready and result.status == 200
    assert result.wire() == {"ready": True, "checks": {"amqp": {"ok": True, "detail": "q"},
                                                       "redis": {"ok": True, "detail": "PONG"}}}


def test_one_failing_check_makes_it_503_and_names_the_failing_ones() -> None:
    result = Readiness((Check("amqp", True), Check("redis", False, "refused"),
                        Check("market_data", False, "stale")))

    assert result.status == 503
    body = result.wire()
    assert body["ready"] is False and body["failing"] == ["redis", "market_data"]
    assert body["checks"]["redis"] == {"ok": False, "detail": "refused"}


# -------------------------------------------------------------------- AMQP consumers


@dataclass
class FakeQueue:
    name: str


@dataclass
class FakeConnection:
    connected: bool = True


@dataclass
class FakeChannel:
    is_open: bool = True
    connection: FakeConnection | None = field(default_factory=FakeConnection)


@dataclass
class FakeKombuConsumer:
    queues: list[FakeQueue]
    channel: FakeChannel = field(default_factory=FakeChannel)
    _active_tags: dict[str, str] = field(default_factory=lambda: {"q": "tag-1"})


class FakeReady:
    def __init__(self, ready: bool) -> None:
        self._ready = ready

    def ready(self) -> bool:
        return self._ready


class FakeQueueConsumer:
    """nameko's QueueConsumer as the probe reads it."""

    def __init__(self, *consumers: FakeKombuConsumer, started: bool = True) -> None:
        self._consumers = {i: c for i, c in enumerate(consumers)}
        self._consumers_ready = FakeReady(started)


def test_attached_consumers_on_a_live_connection_are_ready() -> None:
    qc = FakeQueueConsumer(FakeKombuConsumer([FakeQueue("trade_execution")]),
                           FakeKombuConsumer([FakeQueue("rpc-execute")]))

    check = local_consumers([qc])

    assert check.ok and check.detail == "rpc-execute,trade_execution"


@pytest.mark.parametrize(("consumer", "why"), [
    (FakeKombuConsumer([FakeQueue("q")], FakeChannel(connection=None)), "connection lost"),
    (FakeKombuConsumer([FakeQueue("q")], FakeChannel(is_open=False)), "connection lost"),
    (FakeKombuConsumer([FakeQueue("q")], FakeChannel(connection=FakeConnection(False))),
     "connection lost"),
    (FakeKombuConsumer([FakeQueue("q")], _active_tags={}), "not consuming q"),
])
def test_a_lost_connection_or_a_cancelled_consumer_is_not_ready(
        consumer: FakeKombuConsumer, why: str) -> None:
    check = local_consumers([FakeQueueConsumer(consumer)])

    assert not check.ok and why in check.detail


def test_consumers_that_never_started_are_not_ready() -> None:
    check = local_consumers([FakeQueueConsumer(started=False)])

    assert not check.ok and "not started" in check.detail


# ---------------------------------------------------------------- the feed's state


class FakeReader:
    def __init__(self, fresh: dict[str, Any] | Exception) -> None:
        self.fresh = fresh

    def freshness(self) -> dict[str, Any]:
        if isinstance(self.fresh, Exception):
            raise self.fresh
        return self.fresh


def freshness(market_ok: bool, account_ok: bool, ages: dict[str, int]) -> dict[str, Any]:
    return {"max_staleness_ms": 5000, "market_heartbeat_age_ms": 100,
            "account_heartbeat_age_ms": 200 if account_ok else 9000,
            "account_synced_age_ms": 300, "price_age_ms": ages,
            "market_fresh": market_ok, "account_fresh": account_ok}


def test_fresh_market_and_account_state_are_ready() -> None:
    reader = FakeReader(freshness(True, True, {"BTCUSDT": 120, "ETHUSDT": 340}))

    checks = freshness_checks(reader, account=True)  # type: ignore[arg-type]

    assert [(c.name, c.ok) for c in checks] == [("market_data", True), ("account_state", True)]
    assert "340 ms" in checks[0].detail


def test_stale_market_data_fails_and_the_account_is_only_checked_when_used() -> None:
    reader = FakeReader(freshness(False, False, {"BTCUSDT": 12_000}))

    checks = freshness_checks(reader, account=False)  # type: ignore[arg-type]

    assert [(c.name, c.ok) for c in checks] == [("market_data", False)]
    assert "12000 ms (max 5000 ms)" in checks[0].detail


def test_no_prices_at_all_and_an_unreadable_state_are_not_ready() -> None:
    empty = freshness_checks(FakeReader(freshness(False, True, {})),  # type: ignore[arg-type]
                             account=False)
    broken = freshness_checks(FakeReader(ConnectionError("redis down")),  # type: ignore[arg-type]
                              account=True)

    assert empty[0].detail == "no prices from the feed" and not empty[0].ok
    assert [c.ok for c in broken] == [False, False]
    assert "redis down" in broken[1].detail


# --------------------------------------------------------------- database, exchange


def test_a_reachable_database_is_ready_and_an_unreachable_one_is_not(tmp_path: Any) -> None:
    good = database_check(create_engine(f"sqlite:///{tmp_path / 'ok.db'}"))
    bad = database_check(create_engine(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.db'}"))

    assert good.ok and good.detail == "sqlite"
    assert not bad.ok and "OperationalError" in bad.detail


def test_an_open_circuit_breaker_is_not_ready() -> None:
    assert breaker_check("closed").ok and breaker_check("half-open").ok
    assert not breaker_check("open").ok


# -------------------------------------------------------------------- scripts/status

_SERVER = """
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        bodies = {"/health": (200, b'{"status": "ok"}'),
                  "/ready": (503, b'{"ready": false, "failing": ["amqp", "redis"]}')}
        code, body = bodies.get(self.path, (404, b"no"))
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


@pytest.fixture()
def unready_service() -> Iterator[str]:
    with serving(_SERVER) as url:
        yield url


def test_status_shows_an_alive_but_unready_service_with_its_failing_checks(
        unready_service: str) -> None:
    info = supervise.ProgramInfo("execute", "RUNNING", 42, 10.0, "pid 42")
    health = f"{unready_service}/health"

    name, ok, detail = status.program_row("execute", info, 0, health,
                                          status.ready_url_of("execute", health))

    assert (name, ok) == ("execute", False)
    assert "-> 200" in detail and "NOT READY: amqp, redis" in detail


def test_status_asks_readiness_of_the_services_and_the_feed_only() -> None:
    assert status.ready_url_of("risk", "http://h:1/health") == "http://h:1/ready"
    assert status.ready_url_of("feed", "http://h:4/health") == "http://h:4/ready"
    assert status.ready_url_of("paper_exchange", "http://h:10/health") is None
    assert status.ready_url_of("dashboard", "http://h:8/_stcore/health") is None
