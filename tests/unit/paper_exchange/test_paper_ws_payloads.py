"""WebSocket payload builders against Binance's documented field names (SDK models)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from nameko_services.paper_exchange import streams, userdata, views
from nameko_services.paper_exchange.engine import MatchingEngine
from nameko_services.paper_exchange.events import (
    AccountEvent,
    AlgoEvent,
    OrderEvent,
    UserEvent,
)
from nameko_services.paper_exchange.market import Market

T0 = 1_700_000_000_000
# Field lists of binance-connector-python's websocket_streams models (note §2, §3).
ORDER_FIELDS = {"s", "c", "S", "o", "f", "q", "p", "ap", "sp", "x", "X", "i", "l", "z", "L",
                "N", "n", "T", "t", "b", "a", "m", "R", "wt", "ot", "ps", "cp", "AP", "cr",
                "pP", "si", "ss", "rp", "V", "pm", "gtd"}
ALGO_FIELDS = {"caid", "aid", "at", "o", "s", "S", "ps", "f", "q", "X", "ai", "ap", "aq", "act",
               "tp", "p", "V", "wt", "pm", "cp", "pP", "R", "tt", "gtd", "rm"}


@pytest.fixture
def market() -> Market:
    m = Market(seed=95, volatility_annual=0.6, tick_interval_ms=500, now_ms=T0)
    m.pin("BTCUSDT", Decimal(60000), hold=True)
    return m


@pytest.fixture
def engine(market: Market) -> tuple[MatchingEngine, list[UserEvent]]:
    eng = MatchingEngine(market, Decimal(10000), Decimal("0.0005"), Decimal("0.0001"))
    events: list[UserEvent] = []
    eng.listeners.append(events.append)
    return eng, events


@pytest.mark.parametrize(("name", "kind", "route"), [
    ("btcusdt@markPrice", "markPrice", "market"),
    ("BTCUSDT@markPrice@1s", "markPrice1s", "market"),
    ("!markPrice@arr@1s", "markPriceArr1s", "market"),
    ("ethusdt@kline_4h", "kline", "market"),
    ("btcusdt@miniTicker", "miniTicker", "market"),
    ("btcusdt@ticker", "ticker", "market"),
    ("btcusdt@aggTrade", "aggTrade", "market"),
    ("btcusdt@bookTicker", "bookTicker", "public"),
    ("!bookTicker", "bookTickerAll", "public"),
    ("btcusdt@trade", "trade", "public"),
])
def test_stream_names_parse_to_their_binance_route(name: str, kind: str, route: str) -> None:
    stream = streams.parse_stream(name)
    assert stream is not None and (stream.kind, stream.route, stream.name) == (kind, route, name)


@pytest.mark.parametrize("name", ["0", "btcusdt", "btcusdt@nope", "xrpusdt@markPrice",
                                  "btcusdt@kline_7m", "btcusdt@markprice", "!ticker"])
def test_unknown_streams_are_invalid(name: str) -> None:
    assert streams.parse_stream(name) is None


def test_market_payloads_carry_binance_fields(market: Market) -> None:
    candle = market.recent_klines("BTCUSDT", "1m", 1)[0]
    ticker = views.ticker_24hr(market, "BTCUSDT", T0)

    mark = streams.mark_price("BTCUSDT", Decimal("60000.00"), T0)
    kline = streams.kline("BTCUSDT", "1m", candle, True, T0)
    book = streams.book_ticker("BTCUSDT", 7, Decimal("59994.0"), Decimal("60006.0"),
                               Decimal("0.1"), T0)

    assert set(mark) == {"e", "E", "s", "p", "ap", "i", "P", "r", "T"}
    assert mark["e"] == "markPriceUpdate" and mark["p"] == "60000.00"
    assert mark["T"] > T0 and mark["T"] % (8 * 3_600_000) == 0
    assert set(kline["k"]) == {"t", "T", "s", "i", "f", "L", "o", "c", "h", "l", "v", "n", "x",
                               "q", "V", "Q", "B"}
    assert kline["k"]["s"] == "BTCUSDT" and kline["k"]["x"] is True
    assert kline["k"]["T"] == kline["k"]["t"] + 59_999
    assert set(streams.ticker(ticker, T0)) == {"e", "E", "s", "p", "P", "w", "c", "Q", "o", "h",
                                               "l", "v", "q", "O", "C", "F", "L", "n"}
    assert set(streams.mini_ticker(ticker, T0)) == {"e", "E", "s", "c", "o", "h", "l", "v", "q"}
    assert set(book) == {"e", "u", "E", "T", "s", "b", "B", "a", "A"}
    assert (book["b"], book["a"]) == ("59994.0", "60006.0")
    assert set(streams.agg_trade("BTCUSDT", 1, Decimal(1), Decimal(1), True, T0)) == {
        "e", "E", "s", "a", "p", "q", "nq", "f", "l", "T", "m"}


@pytest.mark.parametrize("interval", ["1m", "5m", "1h", "4h", "1d"])
def test_kline_stream_matches_rest_klines(market: Market, interval: str) -> None:
    (rest,) = views.klines(market, "BTCUSDT", interval, 1, None, None)
    candle = market.recent_klines("BTCUSDT", interval, 1)[0]

    k = streams.kline("BTCUSDT", interval, candle, False, T0)["k"]

    assert [k["t"], k["o"], k["h"], k["l"], k["c"], k["v"], k["T"]] == rest[:7]


def test_market_order_emits_new_trade_then_account_update(
        engine: tuple[MatchingEngine, list[UserEvent]]) -> None:
    eng, events = engine

    eng.place_market("BTCUSDT", "BUY", Decimal("0.01"), False, "u-1")

    assert [type(e).__name__ for e in events] == ["OrderEvent", "OrderEvent", "AccountEvent"]
    new, fill = (userdata.user_payload(e, T0) for e in events[:2])
    assert set(new["o"]) >= ORDER_FIELDS and set(fill["o"]) >= ORDER_FIELDS
    assert (new["o"]["x"], new["o"]["X"], new["o"]["z"]) == ("NEW", "NEW", "0")
    o = fill["o"]
    assert (o["x"], o["X"], o["c"], o["L"], o["l"], o["N"]) == (
        "TRADE", "FILLED", "u-1", "60006.00", "0.01", "USDT")
    assert o["n"] == "0.30003000" and o["t"] > 0 and o["m"] is False
    acc = userdata.user_payload(events[2], T0)["a"]
    assert acc["m"] == "ORDER" and acc["B"] == [{"a": "USDT", "wb": "9999.69997000",
                                                 "cw": "9969.69697000", "bc": "0.00000000"}]
    (pos,) = acc["P"]
    assert set(pos) == {"s", "pa", "ep", "bep", "cr", "up", "mt", "iw", "ps"}
    assert (pos["pa"], pos["ep"], pos["mt"], pos["ps"]) == ("0.01", "60006.00", "isolated",
                                                            "BOTH")


def test_algo_trigger_emits_triggering_triggered_child_then_finished(
        engine: tuple[MatchingEngine, list[UserEvent]], market: Market) -> None:
    eng, events = engine
    eng.place_market("BTCUSDT", "BUY", Decimal("0.01"), False, None)
    algo = eng.place_algo("BTCUSDT", "SELL", "TAKE_PROFIT_MARKET", Decimal("0.01"),
                          Decimal(61200), True, False, "tp-1", "CONTRACT_PRICE")
    events.clear()

    market.pin("BTCUSDT", Decimal(61250))
    eng.on_mark("BTCUSDT", Decimal(61250))

    kinds = [(type(e).__name__, getattr(getattr(e, "algo", None), "status", None),
              getattr(e, "execution", None)) for e in events]
    assert kinds == [("AlgoEvent", "TRIGGERING", None), ("AlgoEvent", "TRIGGERED", None),
                     ("OrderEvent", None, "NEW"), ("OrderEvent", None, "TRADE"),
                     ("AccountEvent", None, None), ("AlgoEvent", "FINISHED", None)]
    triggered = userdata.user_payload(events[1], T0)
    child = userdata.user_payload(events[3], T0)
    assert set(triggered["o"]) == ALGO_FIELDS and triggered["e"] == "ALGO_UPDATE"
    assert triggered["o"]["aid"] == algo.algo_id and triggered["o"]["caid"] == "tp-1"
    assert triggered["o"]["ai"] == str(child["o"]["i"]) and child["o"]["c"] == "tp-1"
    assert float(child["o"]["rp"]) > 0


def test_algo_without_position_expires_and_failed_child_rejects(
        engine: tuple[MatchingEngine, list[UserEvent]], market: Market) -> None:
    eng, events = engine
    eng.place_algo("BTCUSDT", "SELL", "STOP_MARKET", Decimal("0.01"), Decimal(58800), True,
                   False, "sl-1", "CONTRACT_PRICE")
    eng.place_algo("BTCUSDT", "BUY", "STOP_MARKET", Decimal(100), Decimal(61000), False,
                   False, "big-1", "CONTRACT_PRICE")
    eng.cancel_algo(None, "sl-1")
    eng.place_algo("BTCUSDT", "SELL", "STOP_MARKET", Decimal("0.01"), Decimal(58800), True,
                   False, "sl-2", "CONTRACT_PRICE")
    statuses = [e.algo.status for e in events if isinstance(e, AlgoEvent)]
    assert statuses == ["NEW", "NEW", "CANCELED", "NEW"]
    events.clear()

    market.pin("BTCUSDT", Decimal(61000))
    eng.on_mark("BTCUSDT", Decimal(61000))
    market.pin("BTCUSDT", Decimal(58000))
    eng.on_mark("BTCUSDT", Decimal(58000))

    rejected, expired = (e for e in events if isinstance(e, AlgoEvent))
    assert rejected.algo.status == "REJECTED" and rejected.reason == "Margin is insufficient."
    assert userdata.user_payload(rejected, T0)["o"]["rm"] == "Margin is insufficient."
    assert expired.algo.status == "EXPIRED" and expired.algo.client_algo_id == "sl-2"
    assert not any(isinstance(e, (OrderEvent, AccountEvent)) for e in events)


def test_liquidation_is_an_autoclose_trade(engine: tuple[MatchingEngine, list[UserEvent]],
                                          market: Market) -> None:
    eng, events = engine
    eng.place_market("BTCUSDT", "BUY", Decimal("0.01"), False, None)
    events.clear()

    market.pin("BTCUSDT", Decimal(57000))
    eng.on_mark("BTCUSDT", Decimal(57000))

    fill, account = (userdata.user_payload(e, T0) for e in events)
    assert fill["o"]["c"].startswith("autoclose-") and fill["o"]["x"] == "TRADE"
    assert account["a"]["P"][0]["pa"] == "0"


def test_listener_errors_do_not_undo_the_trade(
        engine: tuple[MatchingEngine, list[UserEvent]]) -> None:
    eng, events = engine

    def broken(_: UserEvent) -> None:
        raise RuntimeError("listener bug")

    eng.listeners.insert(0, broken)
    order = eng.place_market("BTCUSDT", "BUY", Decimal("0.01"), False, None)

    assert order.status == "FILLED" and len(events) == 3
