"""Dashboard reading and transforms: candles, the signal join, positions from the account
state, health."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import pytest

from dashboard import candles, reading, transform
from dashboard.rows import StreamEntry
from shared.records import Record
from shared.state import Account, Balance, Order, Price
from shared.state import Position as StatePosition
from tests.support.http_stub import serving

T0 = 1_700_000_040_000  # a minute boundary (ms)


def entry(n: int, kind: str, payload: dict[str, object], signal_id: str = "",
          ts: int | None = None) -> StreamEntry:
    stamp = T0 + n * 1000 if ts is None else ts
    return StreamEntry(f"{stamp}-{n}", Record(kind, dict(payload), signal_id, stamp))


def kline(n: int, symbol: str, open_time: int, o: float, h: float, low: float, c: float,
          v: float = 1.0) -> StreamEntry:
    return entry(n, "kline", {"symbol": symbol, "interval": "1m", "open_time": open_time,
                              "open": o, "high": h, "low": low, "close": c, "volume": v})


def tick(n: int, symbol: str, price: float, ts: int) -> StreamEntry:
    return entry(n, "tick", {"symbol": symbol, "price": price, "mark_price": price}, ts=ts)


# --------------------------------------------------------------------------- candles


def test_klines_latest_update_of_a_candle_wins_and_symbols_are_separated() -> None:
    entries = [
        kline(1, "BTCUSDT", T0, 100, 101, 99, 100.5),
        kline(2, "ETHUSDT", T0, 10, 11, 9, 10.5),
        kline(3, "BTCUSDT", T0, 100, 103, 98, 102.0, v=5),  # same candle, updated
        kline(4, "BTCUSDT", T0 + 60_000, 102, 104, 101, 103.0),
    ]
    frame = candles.build_candles(entries, "btcusdt")
    assert list(frame.columns) == candles.CANDLE_COLUMNS
    assert len(frame) == 2
    first = frame.iloc[0]
    assert (first["open"], first["high"], first["low"], first["close"], first["volume"]) == (
        100, 103, 98, 102.0, 5)
    assert frame["time"].iloc[0] == pd.Timestamp(T0, unit="ms", tz="UTC")
    assert frame["time"].is_monotonic_increasing
    assert candles.build_candles(entries, "ETHUSDT")["close"].tolist() == [10.5]


def test_ticks_build_candles_where_no_kline_covers_the_minute() -> None:
    entries = [
        tick(1, "BTCUSDT", 100.0, T0 + 1_000),
        tick(2, "BTCUSDT", 105.0, T0 + 20_000),
        tick(3, "BTCUSDT", 95.0, T0 + 40_000),
        tick(4, "BTCUSDT", 97.0, T0 + 59_999),
        tick(5, "BTCUSDT", 98.0, T0 + 60_000),  # next minute
        kline(6, "BTCUSDT", T0 + 120_000, 1, 2, 0.5, 1.5),
        tick(7, "BTCUSDT", 300.0, T0 + 121_000),  # covered by the kline: ignored for OHLC
    ]
    frame = candles.build_candles(entries, "BTCUSDT")
    assert frame[["open", "high", "low", "close"]].values.tolist() == [
        [100.0, 105.0, 95.0, 97.0],
        [98.0, 98.0, 98.0, 98.0],
        [1.0, 2.0, 0.5, 1.5],
    ]


def test_candle_book_keeps_history_bounded_and_tracks_prices() -> None:
    book = candles.CandleBook(max_candles=3)
    book.ingest([kline(i, "BTCUSDT", T0 + i * 60_000, i, i, i, i) for i in range(5)])
    book.ingest([tick(9, "ETHUSDT", 42.0, T0)])
    assert book.candles("BTCUSDT")["close"].tolist() == [2, 3, 4]
    assert book.symbols() == ["BTCUSDT", "ETHUSDT"]
    assert book.prices()["ETHUSDT"] == 42.0
    assert book.last_id == f"{T0}-9"
    assert book.candles("XRPUSDT").empty


def test_malformed_market_records_are_skipped() -> None:
    entries = [
        entry(1, "kline", {"symbol": "BTCUSDT", "open_time": T0, "open": "x"}),
        entry(2, "tick", {"symbol": "BTCUSDT"}),
        entry(3, "tick", {"price": 1.0}),
    ]
    assert candles.build_candles(entries, "BTCUSDT").empty
    assert candles.latest_prices(entries) == {}
    assert candles.market_symbols(entries) == ["BTCUSDT"]


# --------------------------------------------------------------------------- signals


def _signal_records() -> tuple[list[StreamEntry], list[StreamEntry], list[StreamEntry]]:
    signals = [
        entry(1, "signal_accepted", {"symbol": "BTCUSDT", "action": "buy", "side": "long",
                                     "price": 100.0, "confidence": 0.8, "strategy": "s",
                                     "interval": "1m", "idempotency_key": "k1"}, "sig-1"),
        entry(2, "signal_scored", {"symbol": "BTCUSDT", "side": "long", "phoenix_score": 0.9,
                                   "final_confidence": 0.93, "decision": "approved",
                                   "reasons": [], "margin_fraction": 0.1}, "sig-1"),
        entry(3, "signal_accepted", {"symbol": "ETHUSDT", "action": "sell", "side": "short",
                                     "price": 10.0}, "sig-2"),
        entry(4, "signal_scored", {"symbol": "ETHUSDT", "side": "short", "phoenix_score": 0.3,
                                   "final_confidence": 0.4, "decision": "rejected",
                                   "reasons": ["PHOENIX_BELOW_THRESHOLD", "LOW_CONF"]},
              "sig-2"),
        entry(5, "signal_rejected", {"reason": "bad_secret", "detail": "wrong webhook secret"},
              ""),
        entry(6, "signal_accepted", {"symbol": "ADAUSDT", "action": "buy", "side": "long",
                                     "price": 0.5}, "sig-3"),
        entry(7, "signal_scored", {"symbol": "ADAUSDT", "phoenix_score": 0.95,
                                   "final_confidence": 0.99, "decision": "approved",
                                   "reasons": []}, "sig-3"),
    ]
    risk = [
        entry(8, "risk_check", {"symbol": "BTCUSDT", "side": "long", "approved": True,
                                "reasons": [], "liquidation_price": 95.5, "checks": {}},
              "sig-1"),
        entry(9, "risk_check", {"symbol": "ADAUSDT", "side": "long", "approved": False,
                                "reasons": ["MAX_POSITIONS"], "checks": {}}, "sig-3"),
        entry(10, "risk_check", {"symbol": "X", "approved": True}, "unknown-signal"),
    ]
    trades = [
        entry(11, "entry_filled", {"symbol": "BTCUSDT", "side": "long", "quantity": 2.0,
                                   "entry_price": 100.2, "leverage": 20, "margin": 10.0},
              "sig-1"),
    ]
    return signals, risk, trades


def test_join_signals_merges_every_stage_by_signal_id() -> None:
    frame = transform.join_signals(*_signal_records())
    assert list(frame.columns) == transform.SIGNAL_COLUMNS
    assert len(frame) == 4  # three signals + one rejected webhook without id
    assert frame["time"].is_monotonic_decreasing  # newest first
    rows = {r["signal_id"] or "anon": r for r in frame.to_dict("records")}

    btc = rows["sig-1"]
    assert (btc["symbol"], btc["action"], btc["side"], btc["price"]) == (
        "BTCUSDT", "buy", "long", 100.0)
    assert (btc["phoenix_score"], btc["final_confidence"], btc["decision"]) == (
        0.9, 0.93, "approved")
    assert btc["risk"] == "approved"
    assert btc["status"] == "filled @ 100.2"
    assert btc["time"] == pd.Timestamp(T0 + 1000, unit="ms", tz="UTC")  # first record

    eth = rows["sig-2"]
    assert eth["decision"] == "rejected"
    assert eth["reasons"] == "PHOENIX_BELOW_THRESHOLD, LOW_CONF"
    assert eth["status"] == "scored: rejected"
    assert eth["risk"] == ""

    ada = rows["sig-3"]
    assert ada["risk"] == "rejected: MAX_POSITIONS"
    assert ada["status"] == "risk rejected"

    anon = rows["anon"]
    assert anon["decision"] == "rejected"
    assert anon["reasons"] == "bad_secret: wrong webhook secret"
    assert anon["symbol"] is None


def test_join_signals_trade_failure_and_out_of_order_records() -> None:
    signals = [
        # scored arrives (with an earlier ts) after accepted in stream order
        entry(5, "signal_accepted", {"symbol": "BNBUSDT", "action": "buy", "side": "long",
                                     "price": 300.0}, "sig-9"),
        entry(4, "signal_scored", {"phoenix_score": 0.8, "final_confidence": 0.9,
                                   "decision": "approved", "reasons": []}, "sig-9"),
    ]
    trades = [entry(6, "trade_failed", {"symbol": "BNBUSDT", "reason": "insufficient margin"},
                    "sig-9")]
    frame = transform.join_signals(signals, [], trades)
    assert len(frame) == 1
    row = frame.iloc[0]
    assert row["symbol"] == "BNBUSDT"
    assert row["status"] == "failed: insufficient margin"
    assert row["time"] == pd.Timestamp(T0 + 4000, unit="ms", tz="UTC")


def test_join_signals_empty() -> None:
    frame = transform.join_signals([], [], [])
    assert frame.empty and list(frame.columns) == transform.SIGNAL_COLUMNS


# --------------------------------------------------------------------------- trades


def _account() -> Account:
    from decimal import Decimal as D

    return Account(
        balance=Balance(wallet=D("1000")),
        positions=(
            StatePosition(symbol="ETHUSDT", side="SHORT", quantity=D("3"), entry_price=D("10"),
                          isolated_wallet=D("1.5"), unrealized_pnl=D("0.3"), leverage=20),
            StatePosition(symbol="BTCUSDT", side="LONG", quantity=D("2"), entry_price=D("100"),
                          isolated_wallet=D("10"), leverage=20, liquidation_price=D("95.5")),
        ),
        orders=(
            Order(symbol="BTCUSDT", kind="algo", order_id="1", type="STOP_MARKET",
                  side="SELL", status="NEW", trigger_price=D("98"), reduce_only=True),
            Order(symbol="BTCUSDT", kind="algo", order_id="2", type="TAKE_PROFIT_MARKET",
                  side="SELL", status="NEW", trigger_price=D("102"), reduce_only=True),
            Order(symbol="ETHUSDT", kind="algo", order_id="3", type="STOP_MARKET",
                  side="BUY", status="CANCELED", trigger_price=D("10.2"), reduce_only=True),
        ),
        as_of_ms=T0)


def test_positions_come_from_the_feeds_account_state_marked_to_the_price_stream() -> None:
    from decimal import Decimal as D

    positions = transform.positions_from_account(
        _account(), {"BTCUSDT": Price(symbol="BTCUSDT", mark=D("101"), last=D("101.5"))})

    btc, eth = positions  # sorted by symbol
    assert (btc.symbol, btc.side, btc.quantity, btc.entry_price) == ("BTCUSDT", "LONG", 2.0,
                                                                     100.0)
    assert (btc.stop_loss, btc.take_profit, btc.liquidation_price) == (98.0, 102.0, 95.5)
    assert (btc.mark_price, btc.margin, btc.leverage) == (101.0, 10.0, 20.0)
    assert btc.unrealized_pnl == pytest.approx(2.0)  # (101 - 100) * 2 at the mark
    # no price yet: the account's own unrealised PnL; a cancelled stop is not a stop
    assert (eth.mark_price, eth.unrealized_pnl, eth.stop_loss) == (None, 0.3, None)
    assert eth.liquidation_price is None  # the exchange gave none: not guessed
    frame = transform.positions_frame(positions)
    assert list(frame.columns) == transform.POSITION_COLUMNS and len(frame) == 2


def test_short_position_pnl_sign_and_fills() -> None:
    from decimal import Decimal as D

    (_, eth) = transform.positions_from_account(
        _account(), {"ETHUSDT": Price(symbol="ETHUSDT", mark=D("9"))})
    assert eth.unrealized_pnl == pytest.approx(3.0)  # short 3 from 10 to 9
    trades = [entry(1, "entry_filled", {"symbol": "ETHUSDT", "side": "short", "quantity": 3.0,
                                        "entry_price": 10.0}, "s2")]
    fills = transform.fills_from_trades(trades, "ethusdt")
    assert [(f.kind, f.side, f.price, f.quantity) for f in fills] == [
        ("entry", "short", 10.0, 3.0)]
    assert transform.fills_from_trades(trades, "BTCUSDT") == []


def test_trade_events_newest_first_with_details() -> None:
    trades = [
        entry(1, "entry_filled", {"symbol": "btcusdt", "side": "long", "quantity": 2,
                                  "entry_price": 100, "leverage": 20, "margin": 10}, "s1"),
        entry(2, "position_closed", {"symbol": "BTCUSDT", "reason": "stop_loss",
                                     "realized_pnl": -4.0}, "s1"),
    ]
    frame = transform.trade_events_frame(trades)
    assert frame["type"].tolist() == ["position_closed", "entry_filled"]
    assert frame["symbol"].tolist() == ["BTCUSDT", "BTCUSDT"]
    assert frame["detail"].iloc[0] == "stop_loss pnl -4.0"
    assert "long 2 @ 100" in frame["detail"].iloc[1]


# --------------------------------------------------------------------------- health / rpc


_HEALTH_SERVER = """
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path in ("/health", "/ready")
        body = b'{"status": "ok"}' if self.path == "/health" else b"nope"
        if self.path == "/ready":
            body = b'{"ready": true, "checks": {}}'
        if self.path == "/notready":
            body = b'{"ready": false, "failing": ["amqp", "market_data"], "checks": {}}'
        self.send_response(200 if ok else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


@pytest.fixture()
def health_server() -> Iterator[str]:
    with serving(_HEALTH_SERVER) as url:
        yield url


def test_check_health_up_down_and_error(health_server: str) -> None:
    results = reading.check_health({
        "brain": f"{health_server}/health",
        "risk": f"{health_server}/broken",
        "execute": "http://127.0.0.1:9/health",
    }, timeout=5.0)  # generous: the full suite runs beside a live stack on two cores
    by = {h.service: h for h in results}
    assert by["brain"].ok and by["brain"].status == "ok" and by["brain"].latency_ms is not None
    assert not by["risk"].ok and by["risk"].status == "HTTP 503"
    assert not by["execute"].ok and by["execute"].status.startswith("down")
    assert reading.health_urls("h", {"brain": 1}) == {"brain": "http://h:1/health"}


def test_rpc_poller_serves_the_latest_snapshot() -> None:
    calls: list[tuple[str, float]] = []

    def fake(uri: str, timeout: float) -> reading.RpcSnapshot:
        calls.append((uri, timeout))
        return reading.RpcSnapshot(positions=[], risk_status={"state": "normal"},
                                fetched_at=float(len(calls)))

    poller = reading.RpcPoller("amqp://x", timeout=0.5, interval=60, fetch=fake)
    try:
        snap = poller.latest(wait=5)
        assert snap is not None and snap.risk_status == {"state": "normal"}
        assert calls == [("amqp://x", 0.5)]
    finally:
        poller.stop()


def test_fetch_rpc_snapshot_reports_unreachable_broker() -> None:
    snap = reading.fetch_rpc_snapshot("amqp://u:p@127.0.0.1:9/%2Ftrading", timeout=1.0)
    assert snap.positions is None and snap.risk_status is None
    assert snap.positions_error and snap.positions_error.startswith("RPC unreachable")
    assert snap.risk_error == snap.positions_error


def test_check_health_shows_readiness_and_the_failing_checks(health_server: str) -> None:
    results = reading.check_health({"brain": f"{health_server}/ready",
                                 "risk": f"{health_server}/notready"}, timeout=5.0)

    by = {h.service: h for h in results}
    assert by["brain"].ok and by["brain"].status == "ready"
    assert not by["risk"].ok and by["risk"].status == "not ready: amqp, market_data"


def test_ready_urls_call_each_service_at_its_advertised_host() -> None:
    from shared.settings import ServicesSettings

    services = ServicesSettings(bind_host="0.0.0.0", hosts={"risk": "risk"})

    assert reading.ready_urls(services, ["risk", "brain"]) == {
        "risk": "http://risk:8101/ready", "brain": "http://127.0.0.1:8100/ready"}
