"""Fixtures for the execution tests: the real paper exchange in-process (its own port and
state file), real Redis for the symbol lock, and SQLite or PostgreSQL for the book."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import ccxt
import pytest
import redis
from sqlalchemy import create_engine, text

from nameko_services.execute.engine import AccountSource, ExecutionEngine, SymbolLock
from nameko_services.execute.store import TradeStore
from nameko_services.paper_exchange.server import PaperExchange
from shared.db import Base, make_sessionmaker
from shared.exchange import make_exchange
from shared.market import ExchangeGateway
from shared.models import TradeIntent
from shared.settings import Settings, load_settings

EXEC_REDIS_URL = "redis://127.0.0.1:6379/15"
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SYMBOL = "BTCUSDT"
CCXT_SYMBOL = "BTC/USDT:USDT"


def exec_settings(database_url: str, **paper: Any) -> Settings:
    return load_settings(
        paper_exchange={"tick_interval_ms": 100, **paper},
        redis_streams={"url": EXEC_REDIS_URL},
        database={"url": database_url},
    )


@pytest.fixture(scope="module")
def secrets_module_env() -> Iterator[None]:
    from tests.conftest import TEST_SECRETS

    with pytest.MonkeyPatch.context() as mp:
        for key, value in TEST_SECRETS.items():
            mp.setenv(key, value)
        yield


@pytest.fixture(scope="module")
def exec_paper(secrets_module_env: None, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[PaperExchange]:
    state = tmp_path_factory.mktemp("paper") / "paper_exchange.db"
    settings = exec_settings("sqlite://", state_path=str(state))
    exchange = PaperExchange(settings, host="127.0.0.1", port=0,
                             slippage=Decimal(0))
    exchange.start()
    yield exchange
    exchange.stop()


def paper_admin(paper: PaperExchange, path: str, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(
        paper.base_url + path, data=json.dumps(body or {}).encode(), method="POST",
        headers={"X-MBX-APIKEY": paper.settings.exchange.api_key.get_secret_value(),
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def pin_price(paper: PaperExchange, price: float, symbol: str = SYMBOL) -> None:
    paper_admin(paper, "/paper/price", {"symbol": symbol, "price": price, "hold": True})


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
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


EngineFactory = Callable[..., ExecutionEngine]


@pytest.fixture
def make_engine(exec_paper: PaperExchange, database_url: str) -> Iterator[EngineFactory]:
    """Build execute instances sharing one exchange, one database and one Redis lock."""
    settings = exec_settings(database_url)
    blocks_key = f"test:execute:blocked:{uuid.uuid4().hex}"  # per test: blocks are shared

    def build(client: ccxt.binanceusdm | None = None,
              state: AccountSource | None = None) -> ExecutionEngine:
        client = client or make_exchange(settings, base_url=exec_paper.base_url)
        return ExecutionEngine(settings, ExchangeGateway(settings, client),
                               TradeStore(make_sessionmaker(settings)),
                               SymbolLock(redis.Redis.from_url(EXEC_REDIS_URL)), state,
                               blocks_key=blocks_key)

    paper_admin(exec_paper, "/paper/reset")
    pin_price(exec_paper, 60000)
    yield build
    redis.Redis.from_url(EXEC_REDIS_URL).delete(blocks_key)
    Base.metadata.drop_all(create_engine(settings.database.resolved_url()))


@pytest.fixture
def engine(make_engine: EngineFactory) -> ExecutionEngine:
    return make_engine()


def subclassed_client(settings_client: ccxt.binanceusdm, cls: type) -> ccxt.binanceusdm:
    """A ccxt client of ``cls`` configured exactly like ``settings_client``."""
    client = cls({"apiKey": settings_client.apiKey, "secret": settings_client.secret,
                  "enableRateLimit": False, "options": dict(settings_client.options)})
    client.urls = settings_client.urls
    client.exceptions = settings_client.exceptions
    return client


def exchange_positions(engine: ExecutionEngine) -> list[dict[str, Any]]:
    """The exchange's open positions as ccxt returns them (not through shared.state)."""
    return [p for p in engine.gw.client.fetch_positions() if p.get("contracts")]


def intent(key: str | None = None, quantity: str = "0.010", side: str = "LONG") -> TradeIntent:
    long = side == "LONG"
    return TradeIntent(
        signal_id=uuid.uuid4().hex, idempotency_key=key or f"id:{uuid.uuid4().hex}",
        symbol=SYMBOL, side=side, quantity=Decimal(quantity),  # type: ignore[arg-type]
        reference_price=Decimal(60000), leverage=20,
        stop_loss=Decimal(58800 if long else 61200),
        take_profit=Decimal(61200 if long else 58800), margin=Decimal(30))
