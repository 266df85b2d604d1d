"""The feed against a fake Binance WebSocket side (REST: the real paper exchange).

The fake lets these tests cause exactly the faults the feed must survive — every socket
dropped, the listenKey expired, a failed keepalive — independently of the paper exchange's
own WebSocket server (tests/integration/feed/test_feed_paper.py runs the same against that).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis

from nameko_services.paper_exchange.server import PaperExchange
from shared.names import REC_EXCHANGE_ORDER, REC_KLINE, REC_TICK
from shared.records import Record
from shared.state import StaleState, StateReader
from tests.support.feed_env import REDIS_URL, SYMBOL, feed_settings
from tests.unit.feed.harness import FakeBinanceWs, FeedThread, wait_for
from tests.unit.feed.payloads import algo_update, kline

pytestmark = pytest.mark.integration

@pytest.fixture
def fake(paper: PaperExchange) -> Iterator[FakeBinanceWs]:
    server = FakeBinanceWs(paper.base_url).start()
    yield server
    server.stop()


def start_feed(fake: FakeBinanceWs, streams: dict[str, str], **feed: Any) -> FeedThread:
    settings = feed_settings(**feed)
    return FeedThread(settings, REDIS_URL, base_url=fake.base_url, ws_url=fake.ws_url,
                      symbols=[SYMBOL], **streams).start()


def records(rds: redis.Redis, stream: str) -> list[Record]:
    return [Record.from_stream_fields(f) for _, f in rds.xrange(stream)]


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_feed_fills_fresh_prices_candles_account_and_market_records(
        fake: FakeBinanceWs, rds: redis.Redis, streams: dict[str, str]) -> None:
    feed = start_feed(fake, streams)
    reader = StateReader(rds, feed.feed.settings)
    try:
        price = wait_for(lambda: (p := reader.price(SYMBOL)).bid is not None and p,
                         what="a fresh price with a best bid")
        account = wait_for(lambda: reader.account(), what="a fresh account")
        # seeded history + the forming candle
        candles = {tf: wait_for(lambda tf=tf: len(reader.candles(SYMBOL, tf, 50)) >= 2,
                                what=tf) for tf in ("1m", "5m", "1h")}
        ticks = wait_for(lambda: [r for r in records(rds, streams["market_stream"])
                                  if r.type == REC_TICK], what="tick records")
        ready = wait_for(lambda: get(feed.url + "/ready")[0] == 200, what="ready")
    finally:
        feed.stop()

    assert price.mark is not None and price.mark > 0 and price.bid is not None
    assert account.balance.wallet > 0
    assert all(candles.values())
    assert ticks[0].data["symbol"] == SYMBOL and Decimal(ticks[0].data["mark_price"]) > 0
    assert ready


def test_after_every_socket_drops_the_feed_reconnects_and_resynchronises(
        fake: FakeBinanceWs, rds: redis.Redis, streams: dict[str, str]) -> None:
    feed = start_feed(fake, streams)
    reader = StateReader(rds, feed.feed.settings)
    try:
        wait_for(lambda: reader.account() and reader.price(SYMBOL), what="fresh state")
        synced_before = feed.feed.account.synced_ms

        fake.drop_all()

        wait_for(lambda: feed.feed.account.synced_ms > synced_before, what="a resync")
        wait_for(lambda: reader.account() and reader.price(SYMBOL), what="fresh again")
        fake.push_private(algo_update())
        algo = wait_for(lambda: reader.account().open_orders(kind="algo"), what="algo order")
    finally:
        feed.stop()

    assert algo[0].order_id == "2148719"
    assert feed.feed.metrics.reconnects.labels("account")._value.get() >= 1
    assert any(r.type == REC_EXCHANGE_ORDER for r in records(rds, streams["trade_stream"]))


def test_an_expired_listen_key_is_re_created_and_events_flow_again(
        fake: FakeBinanceWs, rds: redis.Redis, streams: dict[str, str]) -> None:
    feed = start_feed(fake, streams)
    reader = StateReader(rds, feed.feed.settings)
    try:
        wait_for(lambda: reader.account(), what="a fresh account")

        fake.expire_listen_key()

        wait_for(lambda: fake.listen_key == "fake-listen-key-2", what="a new listenKey")
        wait_for(lambda: fake.private_conns() and
                 fake.private_conns()[0].listen_key == "fake-listen-key-2", what="redial")
        wait_for(lambda: reader.account(), what="fresh again")
        fake.push_private(algo_update(algo_id=7))
        wait_for(lambda: reader.account().open_orders(kind="algo"), what="events flow")
    finally:
        feed.stop()

    assert feed.feed.metrics.reconnects.labels("listen_key")._value.get() == 1


def test_the_keepalive_puts_the_key_and_a_rejected_put_re_creates_it(
        fake: FakeBinanceWs, rds: redis.Redis, streams: dict[str, str]) -> None:
    feed = start_feed(fake, streams, listen_key_keepalive_s=1.0)
    reader = StateReader(rds, feed.feed.settings)
    try:
        wait_for(lambda: reader.account(), what="a fresh account")
        wait_for(lambda: fake.puts >= 1, what="a keepalive PUT")

        fake.listen_key = ""  # the exchange forgot the key: the next PUT gets -1125

        wait_for(lambda: fake.listen_key.startswith("fake-listen-key-"), what="a new key")
        wait_for(lambda: reader.account(), what="fresh again")
    finally:
        feed.stop()

    assert fake.posts >= 2


def test_when_the_exchange_goes_away_the_state_turns_stale_and_recovers_on_return(
        paper: PaperExchange, fake: FakeBinanceWs, rds: redis.Redis,
        streams: dict[str, str]) -> None:
    feed = start_feed(fake, streams)
    reader = StateReader(rds, feed.feed.settings)
    port = fake.port
    try:
        wait_for(lambda: reader.account() and reader.price(SYMBOL), what="fresh state")

        fake.stop()
        # well inside max_staleness (2 s): the feed marks the account down on the close
        account = wait_for(lambda: _stale(reader.account), timeout=1.0, what="stale account")
        market = wait_for(lambda: _stale(lambda: reader.price(SYMBOL)), timeout=4.0,
                          what="stale market")
        back = FakeBinanceWs(paper.base_url).start(port)
        try:
            wait_for(lambda: reader.account() and reader.price(SYMBOL), timeout=40,
                     what="fresh after the restart")
        finally:
            back.stop()
    finally:
        feed.stop()

    assert account == "account_state_stale"
    assert market == "market_data_stale"


def _stale(read: Any) -> str:
    try:
        read()
    except StaleState as exc:
        return exc.reason
    return ""


def test_a_closed_kline_reaches_the_market_stream_once(
        fake: FakeBinanceWs, rds: redis.Redis, streams: dict[str, str]) -> None:
    feed = start_feed(fake, streams)
    reader = StateReader(rds, feed.feed.settings)
    open_ms = (int(time.time() * 1000) // 300_000 + 1) * 300_000  # the next 5m candle
    closed = kline(open_ms, "51234.5", closed=True, interval="5m")
    try:
        wait_for(lambda: len(reader.candles(SYMBOL, "5m", 50)) >= 2, what="seeded candles")
        wait_for(lambda: any("@kline_5m" in s for c in fake.conns for s in c.streams),
                 what="the 5m kline subscription")

        fake.push_kline(closed)
        fake.push_kline(closed)  # a duplicate is not a second candle
        fake.push_kline(kline(open_ms + 300_000, "51240", closed=False, interval="5m"))

        # events are handled in order: once the next candle is stored, both were handled
        wait_for(lambda: reader.candles(SYMBOL, "5m", 50)[-1][0] == open_ms + 300_000,
                 what="the next candle stored")
        recs = [r.data for r in records(rds, streams["market_stream"])
                if r.type == REC_KLINE and r.data["open_time"] == open_ms]
        stored = reader.candles(SYMBOL, "5m", 50)[-2]
    finally:
        feed.stop()

    assert len(recs) == 1 and stored[0] == open_ms and stored[4] == 51234.5
    assert (recs[0]["symbol"], recs[0]["interval"], recs[0]["close"]) == \
        (SYMBOL, "5m", "51234.5")
