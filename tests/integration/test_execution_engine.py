"""ExecutionEngine against the real paper exchange (through ccxt), real Redis and both
databases: what a crash, a redelivery or a second instance would do to money."""

from __future__ import annotations

import json
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import ccxt
import pytest
import redis
from sqlalchemy import create_engine, text

from nameko_services.execute.engine import ExecutionEngine, SymbolLock
from nameko_services.execute.store import TradeStore
from nameko_services.paper_exchange.server import PaperExchange
from shared.db import Base, make_sessionmaker
from shared.exchange import client_order_id, make_exchange
from shared.market import ExchangeGateway
from shared.models import TradeIntent
from shared.settings import Settings, load_settings

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/15"
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SYMBOL = "BTCUSDT"
CCXT_SYMBOL = "BTC/USDT:USDT"


def _settings(database_url: str, port: int = 8110) -> Settings:
    return load_settings(
        paper_exchange={"tick_interval_ms": 100, "port": port},
        redis_streams={"url": REDIS_URL},
        database={"url": database_url},
    )


@pytest.fixture(scope="module")
def paper(secrets_module_env: None) -> Iterator[PaperExchange]:
    exchange = PaperExchange(_settings("sqlite://"), host="127.0.0.1", port=0,
                             stream=f"test:exec:market:{uuid.uuid4().hex[:8]}",
                             slippage=Decimal(0), publish=False)
    exchange.start()
    yield exchange
    exchange.stop()


@pytest.fixture(scope="module")
def secrets_module_env() -> Iterator[None]:
    from tests.conftest import TEST_SECRETS

    with pytest.MonkeyPatch.context() as mp:
        for key, value in TEST_SECRETS.items():
            mp.setenv(key, value)
        yield


def _admin(paper: PaperExchange, path: str, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(
        paper.base_url + path, data=json.dumps(body or {}).encode(), method="POST",
        headers={"X-MBX-APIKEY": paper.settings.exchange.api_key.get_secret_value(),
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'phoenix95.db'}"
        return
    name = f"phoenix95_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _engine(paper: PaperExchange, database_url: str,
            client: ccxt.binanceusdm | None = None) -> ExecutionEngine:
    settings = _settings(database_url)
    client = client or make_exchange(settings, base_url=paper.base_url)
    return ExecutionEngine(settings, ExchangeGateway(settings, client),
                           TradeStore(make_sessionmaker(settings)),
                           SymbolLock(redis.Redis.from_url(REDIS_URL)))


@pytest.fixture
def engine(paper: PaperExchange, database_url: str) -> Iterator[ExecutionEngine]:
    _admin(paper, "/paper/reset")
    _admin(paper, "/paper/price", {"symbol": SYMBOL, "price": 60000, "hold": True})
    yield _engine(paper, database_url)
    Base.metadata.drop_all(create_engine(_settings(database_url).database.resolved_url()))


def _intent(key: str | None = None, quantity: str = "0.010") -> TradeIntent:
    return TradeIntent(
        signal_id=uuid.uuid4().hex, idempotency_key=key or f"id:{uuid.uuid4().hex}",
        symbol=SYMBOL, side="LONG", quantity=Decimal(quantity),
        reference_price=Decimal(60000), leverage=20, stop_loss=Decimal(58800),
        take_profit=Decimal(61200), margin=Decimal(30))


def _entry_trades(engine: ExecutionEngine) -> list[dict[str, Any]]:
    return [t for t in engine.gw.client.fetch_my_trades(CCXT_SYMBOL) if t["side"] == "buy"]


def test_entry_is_protected_by_reduce_only_stop_and_take_profit_at_two_percent(engine):
    outcome = engine.open(_intent())

    assert outcome.status == "opened"
    position = engine.gw.positions()[0]
    assert position["contracts"] == 0.01 and position["side"] == "long"
    assert position["marginMode"] == "isolated"
    algo = {o["info"]["orderType"]: o for o in engine.gw.client.fetch_open_orders(
        CCXT_SYMBOL, params={"trigger": True})}
    assert algo["STOP_MARKET"]["triggerPrice"] == 58800.0
    assert algo["TAKE_PROFIT_MARKET"]["triggerPrice"] == 61200.0
    assert all(o["reduceOnly"] and o["side"] == "sell" for o in algo.values())
    assert outcome.details["stop_loss_armed"] and outcome.details["take_profit_armed"]
    assert Decimal(outcome.details["liquidation_price"]).quantize(Decimal("0.01")) == Decimal(
        "57228.92")


def test_redelivered_intent_never_opens_a_second_position(engine):
    intent = _intent()
    engine.open(intent)

    again = engine.open(intent)

    assert again.status == "duplicate"
    assert len(_entry_trades(engine)) == 1
    assert engine.gw.positions()[0]["contracts"] == 0.01


def test_crash_after_sending_entry_adopts_the_exchange_order_instead_of_resending(
        engine, paper, database_url):
    intent = _intent()
    # the previous worker sent the entry and died before recording anything
    engine.gw.call(engine.gw.client.set_leverage, 20, CCXT_SYMBOL)
    engine.gw.client.create_order(CCXT_SYMBOL, "market", "buy", 0.01, None,
                                  {"clientOrderId": client_order_id("p95e",
                                                                    intent.idempotency_key)})
    restarted = _engine(paper, database_url)

    outcome = restarted.open(intent)

    assert outcome.status == "opened"
    assert len(_entry_trades(engine)) == 1
    assert len(engine.gw.client.fetch_open_orders(CCXT_SYMBOL, params={"trigger": True})) == 2


def test_two_instances_racing_on_one_intent_open_one_position(engine, paper, database_url):
    intent = _intent()
    other = _engine(paper, database_url)
    results: list[str] = []

    threads = [threading.Thread(target=lambda e=e: results.append(e.open(intent).status))
               for e in (engine, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert sorted(results) == ["duplicate", "opened"]
    assert len(_entry_trades(engine)) == 1


class _StopsRefused(ccxt.binanceusdm):  # type: ignore[misc]
    """The exchange refuses the stop-loss (e.g. -2021 after a gap)."""

    def create_order(self, symbol, type, side, amount, price=None, params=None):
        if type == "STOP_MARKET":
            raise ccxt.OrderImmediatelyFillable("Order would immediately trigger.")
        return super().create_order(symbol, type, side, amount, price, params or {})


def test_position_without_stop_loss_is_closed_at_once(paper, database_url, engine):
    settings = _settings(database_url)
    client = make_exchange(settings, base_url=paper.base_url)
    refusing = _StopsRefused(client.config if hasattr(client, "config") else {})
    refusing.urls, refusing.apiKey, refusing.secret = client.urls, client.apiKey, client.secret
    refusing.options.update(client.options)
    refusing.exceptions = client.exceptions
    unsafe = _engine(paper, database_url, refusing)

    outcome = unsafe.open(_intent())

    assert outcome.status == "failed"
    assert "stop-loss could not be placed" in outcome.reason
    assert engine.gw.positions() == []


def test_close_flattens_cancels_brackets_and_books_pnl(engine, paper):
    engine.open(_intent())
    _admin(paper, "/paper/price", {"symbol": SYMBOL, "price": 60600, "hold": True})

    outcome = engine.close(SYMBOL, "manual")

    assert outcome.status == "closed"
    assert Decimal(outcome.details["realized_pnl"]) == Decimal("6.0")
    assert engine.gw.positions() == []
    assert engine.gw.client.fetch_open_orders(CCXT_SYMBOL, params={"trigger": True}) == []
    booked = engine.store.trades(1)[0]
    assert (booked.status, booked.close_reason) == ("closed", "manual")
