"""Brain's analysis on the feed's state: candles, price and equity written with the real
StateWriter into Redis (db 13) and read with the real StateReader; the symbol rules are the
real in-process paper exchange's markets, stored as the feed stores them. Brain has no
exchange client: an analysis sends the exchange nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from nameko_services.brain.dependencies import StateMarketView
from nameko_services.brain.engine import BrainEngine
from nameko_services.brain.features import FAST_MS, SLOW_MS
from nameko_services.brain.track_record import TrackRecord
from nameko_services.brain.training import synthetic_market
from nameko_services.paper_exchange.server import PaperExchange
from shared.exchange import make_exchange
from shared.models import Signal
from shared.names import STATE_SYMBOLS_KEY
from shared.settings import Settings, load_settings
from shared.state import Account, Balance, Price, StateReader, StateWriter, now_ms
from shared.symbol_rules import SymbolRules, SymbolRulesReader, store_rules
from tests.integration.conftest import paper_admin, pin_price
from tests.support.brain_fakes import constant_model, rows
from tests.support.state_feed import clear_state

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/13"
SYMBOL = "BTCUSDT"
STALE_MS = 10_000


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    clear_state(conn)
    yield conn
    clear_state(conn)
    conn.close()


@pytest.fixture
def settings(exec_paper: PaperExchange, tmp_path: Path) -> Settings:
    return load_settings(redis_streams={"url": REDIS_URL},
                         database={"url": f"sqlite:///{tmp_path / 'brain.db'}"},
                         phoenix_95={"confidence_prior": False})


def write_state(writer: StateWriter, *, market_age_ms: int = 0,
                account_age_ms: int = 0) -> None:
    """What the feed keeps: 300 closed candles + the forming one per timeframe, the price,
    the account and its heartbeat."""
    now = now_ms()
    bar = now - now % FAST_MS
    fast = rows(synthetic_market(3000, seed=3, start_ms=bar - 2999 * FAST_MS))
    slow = rows(synthetic_market(3000, seed=3, start_ms=bar - 2999 * FAST_MS)
                .resample(SLOW_MS))
    for timeframe, series in (("5m", fast), ("1h", slow)):
        writer.candles(SYMBOL, timeframe, series[:-1][-300:], series[-1])
    writer.prices([Price(symbol=SYMBOL, mark=Decimal(60000), last=Decimal(60000),
                         updated_ms=now - market_age_ms)])
    writer.replace_account(Account(balance=Balance(wallet=Decimal(10000),
                                                   cross_wallet=Decimal(10000)), as_of_ms=now))
    writer.heartbeat(market=True, account=True, at_ms=now - account_age_ms)


def publish_rules(settings: Settings, paper: PaperExchange, client: redis.Redis) -> None:
    """What the feed does after loading the markets: the fed symbol's rules into Redis."""
    exchange = make_exchange(settings, base_url=paper.base_url)
    exchange.load_markets()
    store_rules(client, [SymbolRules.from_ccxt_market(exchange.market("BTC/USDT:USDT"))])


def make_engine(settings: Settings, client: redis.Redis) -> BrainEngine:
    view = StateMarketView(StateReader(client, settings), SymbolRulesReader(client))
    return BrainEngine(settings, view, constant_model(0.9), TrackRecord.from_settings(settings))


def signal() -> Signal:
    return Signal(signal_id=uuid.uuid4().hex, idempotency_key=uuid.uuid4().hex, symbol=SYMBOL,
                  action="buy", side="LONG", price=Decimal(60000), confidence=0.9,
                  strategy="ema-cross", received_at=datetime.now(UTC))


@pytest.fixture
def engine(settings: Settings, exec_paper: PaperExchange, client: redis.Redis) -> BrainEngine:
    paper_admin(exec_paper, "/paper/reset")
    pin_price(exec_paper, 60000)
    publish_rules(settings, exec_paper, client)
    return make_engine(settings, client)


def test_warm_analysis_sizes_from_the_state_with_the_exchanges_rules(
        engine: BrainEngine, client: redis.Redis) -> None:
    write_state(StateWriter(client))

    decisions = [engine.analyze(signal()) for _ in range(3)]

    assert all(d.approved for d in decisions), [d.analysis.reasons for d in decisions]
    sizing = decisions[0].analysis.sizing
    assert Decimal(sizing["equity"]) == Decimal(10000) and Decimal(sizing["price"]) == 60000
    assert Decimal(sizing["min_quantity"]) == Decimal("0.001")
    intent = decisions[0].intent
    assert intent is not None and intent.quantity == intent.quantity.quantize(Decimal("0.001"))
    assert intent.stop_loss == intent.stop_loss.quantize(Decimal("0.1"))
    assert "trend_fast" in decisions[0].analysis.features


def test_a_symbol_without_published_rules_is_refused_as_stale_market(
        engine: BrainEngine, client: redis.Redis) -> None:
    write_state(StateWriter(client))
    client.delete(STATE_SYMBOLS_KEY)

    decision = engine.analyze(signal())

    assert decision.analysis.reasons == ("market_data_stale",)
    assert decision.intent is None


def test_stale_market_data_rejects_the_signal(
        engine: BrainEngine, client: redis.Redis) -> None:
    brain = engine
    write_state(StateWriter(client), market_age_ms=STALE_MS)

    decision = brain.analyze(signal())

    assert decision.analysis.reasons == ("market_data_stale",)
    assert decision.intent is None


def test_stale_account_state_rejects_the_signal(
        engine: BrainEngine, client: redis.Redis) -> None:
    brain = engine
    write_state(StateWriter(client), account_age_ms=STALE_MS)

    decision = brain.analyze(signal())

    assert decision.analysis.reasons == ("account_state_stale",)


def test_no_state_at_all_rejects_as_stale_market(
        engine: BrainEngine) -> None:
    brain = engine

    decision = brain.analyze(signal())

    assert decision.analysis.reasons == ("market_data_stale",)
