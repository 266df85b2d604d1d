"""The feed against the real in-process paper exchange (REST and WebSocket on port 0).

What the rest of the system relies on: fresh prices and candles in Redis, ticks and closed
klines on market:stream, the account (positions, SL/TP algo orders) kept from the
user-data stream with records on trade:stream, and recovery from dropped sockets, an
expired listenKey and an exchange restart, with the state reading stale meanwhile.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import ccxt
import pytest
import redis

from nameko_services.paper_exchange.server import PaperExchange
from shared.exchange import make_exchange
from shared.names import REC_EXCHANGE_ORDER, REC_EXCHANGE_POSITION, REC_KLINE, REC_TICK
from shared.records import Record
from shared.settings import Settings, load_settings
from shared.state import StaleState, StateReader
from shared.symbol_rules import SymbolRulesReader
from tests.unit.feed.harness import FeedThread, wait_for

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/11"
SYMBOL = "BTCUSDT"
CCXT_SYMBOL = "BTC/USDT:USDT"
MAX_STALENESS_S = 2.0


def feed_settings() -> Settings:
    return load_settings(
        redis_streams={"url": REDIS_URL},
        paper_exchange={"tick_interval_ms": 100},
        feed={"candle_limit": 20, "heartbeat_interval_s": 0.2,
              "max_staleness_seconds": MAX_STALENESS_S})


@pytest.fixture(scope="module")
def paper(secrets_module_env: None) -> Iterator[PaperExchange]:
    exchange = PaperExchange(feed_settings(), host="127.0.0.1", port=0, state_path="")
    exchange.start()
    yield exchange
    exchange.stop()


def admin(paper: PaperExchange, path: str, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(
        paper.base_url + path, data=json.dumps(body or {}).encode(), method="POST",
        headers={"X-MBX-APIKEY": paper.settings.exchange.api_key.get_secret_value(),
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture
def rds() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    client.delete(*client.keys("phoenix95:state:*") or ["-"])
    yield client
    client.delete(*client.keys("phoenix95:state:*") or ["-"])
    client.close()


@pytest.fixture
def streams(rds: redis.Redis) -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:8]
    names = {"market_stream": f"test:feed:market:{tag}", "trade_stream": f"test:feed:trade:{tag}"}
    yield names
    rds.delete(*names.values())


@pytest.fixture
def feed(paper: PaperExchange, streams: dict[str, str]) -> Iterator[FeedThread]:
    admin(paper, "/paper/reset")
    thread = FeedThread(feed_settings(), REDIS_URL, base_url=paper.base_url,
                        ws_url=paper.ws_url, symbols=[SYMBOL, "ETHUSDT"], **streams).start()
    yield thread
    thread.stop()


@pytest.fixture
def rest(paper: PaperExchange) -> ccxt.binanceusdm:
    return make_exchange(paper.settings, base_url=paper.base_url)


def records(rds: redis.Redis, stream: str, rec_type: str) -> list[dict[str, Any]]:
    return [r.data for r in (Record.from_stream_fields(f) for _, f in rds.xrange(stream))
            if r.type == rec_type]


def fresh(reader: StateReader) -> bool:
    return bool(reader.account() and reader.price(SYMBOL) and reader.price("ETHUSDT"))


def stale_reason(read: Any) -> str:
    try:
        read()
    except StaleState as exc:
        return exc.reason
    return ""


def test_prices_candles_ticks_and_closed_klines_flow_from_the_paper_exchange(
        feed: FeedThread, rds: redis.Redis, streams: dict[str, str]) -> None:
    reader = StateReader(rds, feed.feed.settings)

    wait_for(lambda: fresh(reader), what="fresh market and account state")
    price = wait_for(lambda: (p := reader.price(SYMBOL)).bid is not None and
                     p.last is not None and p, what="mark, last and best bid/ask")
    candles = {tf: wait_for(lambda tf=tf: len(rows := reader.candles(SYMBOL, tf, 50)) >= 20
                            and rows, what=f"{tf} candles") for tf in ("1m", "5m", "1h")}
    ticks = wait_for(lambda: records(rds, streams["market_stream"], REC_TICK), what="ticks")
    status = wait_for(lambda: _get(feed.url + "/ready")[0] == 200, what="ready")
    # a 1m candle closes within a minute of wall-clock time
    kline = wait_for(lambda: records(rds, streams["market_stream"], REC_KLINE), timeout=75,
                     what="a closed kline")

    assert price.mark is not None and price.mark > 0 and price.ask is not None
    assert all(rows[-1][0] > rows[-2][0] for rows in candles.values())
    assert {t["symbol"] for t in ticks} <= {SYMBOL, "ETHUSDT"}
    assert Decimal(ticks[0]["mark_price"]) > 0 and status
    assert kline[0]["interval"] == "1m" and Decimal(kline[0]["close"]) > 0
    rules = SymbolRulesReader(rds).get(SYMBOL)
    assert rules.tick_size > 0 and rules.step_size > 0 and rules.min_notional > 0
    assert rules.brackets and rules.brackets[0].notional_floor == 0  # the exchange's table


def test_a_position_with_stop_loss_and_take_profit_shows_in_the_account_state(
        feed: FeedThread, paper: PaperExchange, rest: ccxt.binanceusdm, rds: redis.Redis,
        streams: dict[str, str]) -> None:
    reader = StateReader(rds, feed.feed.settings)
    wait_for(lambda: fresh(reader), what="fresh state")
    admin(paper, "/paper/price", {"symbol": SYMBOL, "price": 60000, "hold": True})

    try:
        entry = rest.create_order(CCXT_SYMBOL, "market", "buy", 0.01)
        sl = rest.create_order(CCXT_SYMBOL, "STOP_MARKET", "sell", 0.01, None,
                               {"stopPrice": 58800, "reduceOnly": True})
        tp = rest.create_order(CCXT_SYMBOL, "TAKE_PROFIT_MARKET", "sell", 0.01, None,
                               {"triggerPrice": 61200, "reduceOnly": True})

        account = wait_for(lambda: (a := reader.account()).position(SYMBOL) and
                           len(a.open_orders(SYMBOL, kind="algo")) == 2 and a,
                           what="the position and its two algo orders")
    finally:
        admin(paper, "/paper/price", {"symbol": SYMBOL, "price": 60000, "hold": False})
    orders = wait_for(lambda: records(rds, streams["trade_stream"], REC_EXCHANGE_ORDER),
                      what="order records")

    pos = account.position(SYMBOL)
    assert pos is not None and (pos.side, pos.quantity) == ("LONG", Decimal("0.01"))
    assert pos.isolated_wallet > 0
    algos = {o.order_id: o for o in account.open_orders(SYMBOL, kind="algo")}
    assert set(algos) == {str(sl["id"]), str(tp["id"])}
    assert algos[str(sl["id"])].trigger_price == Decimal(58800)
    assert {o["order"]["order_id"] for o in orders} >= {str(entry["id"]), str(sl["id"]),
                                                        str(tp["id"])}
    assert any(r["symbol"] == SYMBOL and Decimal(r["quantity"]) == Decimal("0.01")
               and r["reason"] == "ORDER"
               for r in records(rds, streams["trade_stream"], REC_EXCHANGE_POSITION))


def test_after_the_exchange_drops_every_socket_the_feed_reconnects_and_resynchronises(
        feed: FeedThread, paper: PaperExchange, rest: ccxt.binanceusdm, rds: redis.Redis
) -> None:
    reader = StateReader(rds, feed.feed.settings)
    wait_for(lambda: fresh(reader), what="fresh state")
    synced = feed.feed.account.synced_ms

    dropped = admin(paper, "/paper/ws/drop")["dropped"]

    wait_for(lambda: feed.feed.account.synced_ms > synced, what="a resync after the drop")
    wait_for(lambda: fresh(reader), what="fresh again")
    rest.create_order(CCXT_SYMBOL, "market", "buy", 0.01)
    pos = wait_for(lambda: reader.account().position(SYMBOL), what="events after reconnect")
    assert dropped >= 2 and pos.quantity == Decimal("0.01")
    assert feed.feed.metrics.reconnects.labels("account")._value.get() >= 1


def test_after_redis_loses_its_data_the_feed_resynchronises_instead_of_reporting_flat(
        feed: FeedThread, rest: ccxt.binanceusdm, rds: redis.Redis) -> None:
    reader = StateReader(rds, feed.feed.settings)
    wait_for(lambda: fresh(reader), what="fresh state")
    rest.create_order(CCXT_SYMBOL, "market", "buy", 0.01)
    held = wait_for(lambda: reader.account().position(SYMBOL), what="the position").quantity

    rds.flushdb()  # what a restart of Redis (no persistence) leaves behind
    # an event for another symbol rewrites the balance: without a resync the account would
    # now read fresh, with ETHUSDT only, and BTCUSDT's position silently gone
    rest.create_order("ETH/USDT:USDT", "market", "buy", 0.01)

    account = wait_for(lambda: (a := reader.account()).position("ETHUSDT") and a,
                       what="the account back after the loss")
    btc = account.position(SYMBOL)
    assert btc is not None and btc.quantity == held
    # candles reseeded too (candle_limit closed ones + the forming one)
    wait_for(lambda: len(reader.candles(SYMBOL, "5m", 50)) == 21, what="candles reseeded")
    assert SymbolRulesReader(rds).get(SYMBOL).step_size > 0  # and the symbols' rules
    rest.create_order(CCXT_SYMBOL, "market", "sell", float(held), None, {"reduceOnly": True})
    rest.create_order("ETH/USDT:USDT", "market", "sell", 0.01, None, {"reduceOnly": True})


def test_after_the_listen_key_expires_the_feed_re_creates_it_and_keeps_receiving_events(
        feed: FeedThread, paper: PaperExchange, rest: ccxt.binanceusdm, rds: redis.Redis
) -> None:
    reader = StateReader(rds, feed.feed.settings)
    wait_for(lambda: fresh(reader), what="fresh state")
    old_key = feed.feed.ex.options["linear"]["listenKey"]  # type: ignore[union-attr]

    expired = admin(paper, "/paper/listenkey/expire")["expired"]

    wait_for(lambda: (feed.feed.ex.options.get("linear") or {}).get(  # type: ignore[union-attr]
        "listenKey") not in (None, old_key), what="a new listenKey")
    wait_for(lambda: reader.account(), what="the account fresh again")
    rest.create_order(CCXT_SYMBOL, "market", "sell", 0.02)
    pos = wait_for(lambda: reader.account().position(SYMBOL), what="events on the new key")
    assert old_key in expired and (pos.side, pos.quantity) == ("SHORT", Decimal("0.02"))
    assert feed.feed.metrics.reconnects.labels("listen_key")._value.get() == 1


def test_the_state_turns_stale_while_the_exchange_is_down_and_fresh_after_it_restarts(
        secrets_module_env: None, rds: redis.Redis, streams: dict[str, str]) -> None:
    settings = feed_settings()
    exchange = PaperExchange(settings, host="127.0.0.1", port=0, state_path="")
    exchange.start()
    port = exchange.port
    thread = FeedThread(settings, REDIS_URL, base_url=exchange.base_url,
                        ws_url=exchange.ws_url, symbols=[SYMBOL], **streams).start()
    reader = StateReader(rds, settings)
    try:
        wait_for(lambda: reader.account() and reader.price(SYMBOL), what="fresh state")

        exchange.stop()
        account = wait_for(lambda: stale_reason(reader.account), timeout=MAX_STALENESS_S + 1,
                           what="a stale account")
        market = wait_for(lambda: stale_reason(lambda: reader.price(SYMBOL)),
                          timeout=MAX_STALENESS_S + 1, what="stale market data")
        exchange = PaperExchange(settings, host="127.0.0.1", port=port, state_path="")
        exchange.start()
        wait_for(lambda: reader.account() and reader.price(SYMBOL), timeout=45,
                 what="fresh after the restart")
    finally:
        thread.stop()
        exchange.stop()

    assert (account, market) == ("account_state_stale", "market_data_stale")


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
