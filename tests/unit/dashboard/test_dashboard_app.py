"""Render dashboard/app.py with AppTest against a real Redis (DB 14) and no RPC broker."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from streamlit.testing.v1 import AppTest

from shared import names
from shared.records import Record
from shared.settings import get_settings

APP = Path(__file__).resolve().parents[3] / "dashboard" / "app.py"
REDIS_URL = "redis://127.0.0.1:6379/14"
STREAMS = (names.MARKET_STREAM, names.SIGNAL_STREAM, names.RISK_STREAM, names.TRADE_STREAM)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def seeded(monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis at 127.0.0.1:6379")
    # another checkout's test run may use the same DB at the same time: take turns
    lock = client.lock("phoenix95:test-lock:dashboard-app", timeout=300,
                       blocking_timeout=300)
    assert lock.acquire(), "could not get the test lock on Redis DB 14"
    client.delete(*STREAMS)
    env = {
        "PHOENIX__REDIS_STREAMS__URL": REDIS_URL,
        "PHOENIX__MESSAGE_QUEUE__PORT": str(_closed_port()),
        "PHOENIX__SECURITY__WEBHOOK_SECRET": "test-secret",
        "PHOENIX__SECURITY__API_KEYS": '["k"]',
        "PHOENIX__MESSAGE_QUEUE__PASSWORD": "pw",
        "PHOENIX__EXCHANGE__API_KEY": "key",
        "PHOENIX__EXCHANGE__API_SECRET": "secret",
        "PHOENIX__EXCHANGE__MODE": "paper",  # whatever mode the calling test system runs
        "PHOENIX__DASHBOARD__AUTH_ENABLED": "false",  # the login: test_dashboard_login.py
    }
    for service in names.SERVICES:  # nothing listens: the health panel shows them down
        env[f"PHOENIX__SERVICES__{service.upper()}_PORT"] = str(_closed_port())
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()

    try:
        _seed(client)
        yield client
    finally:
        client.delete(*STREAMS)
        lock.release()
        get_settings.cache_clear()


def _seed(client: redis.Redis) -> None:
    now = int(time.time() * 1000)
    minute = now - now % 60_000

    def add(stream: str, kind: str, data: dict[str, object], signal_id: str = "",
            ts: int = 0) -> None:
        fields: dict[Any, Any] = Record(kind, data, signal_id, ts or now).stream_fields()
        client.xadd(stream, fields)

    for i in range(5):
        open_time = minute - (4 - i) * 60_000
        add(names.MARKET_STREAM, "kline",
            {"symbol": "BTCUSDT", "interval": "1m", "open_time": open_time, "open": 100 + i,
             "high": 102 + i, "low": 99 + i, "close": 101 + i, "volume": 3}, ts=open_time + 1)
    add(names.MARKET_STREAM, "tick", {"symbol": "BTCUSDT", "price": 105.5,
                                      "mark_price": 105.4})
    add(names.SIGNAL_STREAM, "signal_accepted",
        {"symbol": "BTCUSDT", "action": "buy", "side": "long", "price": 105.0,
         "confidence": 0.8, "strategy": "ema", "interval": "1m", "idempotency_key": "i1"},
        "sig-app-1")
    add(names.SIGNAL_STREAM, "signal_scored",
        {"symbol": "BTCUSDT", "side": "long", "phoenix_score": 0.91, "final_confidence": 0.95,
         "decision": "approved", "reasons": [], "margin_fraction": 0.1}, "sig-app-1")
    add(names.SIGNAL_STREAM, "signal_scored",
        {"symbol": "ETHUSDT", "side": "short", "phoenix_score": 0.2, "final_confidence": 0.3,
         "decision": "rejected", "reasons": ["PHOENIX_BELOW_THRESHOLD"]}, "sig-app-2")
    add(names.RISK_STREAM, "risk_check",
        {"symbol": "BTCUSDT", "side": "long", "approved": True, "reasons": [],
         "liquidation_price": 100.3, "checks": {}}, "sig-app-1")
    add(names.TRADE_STREAM, "entry_filled",
        {"symbol": "BTCUSDT", "side": "long", "quantity": 0.5, "entry_price": 105.0,
         "client_order_id": "c1", "order_id": "o1", "leverage": 20, "margin": 2.6},
        "sig-app-1")
    add(names.TRADE_STREAM, "brackets_placed",
        {"symbol": "BTCUSDT", "stop_loss": 102.9, "take_profit": 107.1, "sl_client_id": "s",
         "tp_client_id": "t", "liquidation_price": 100.3}, "sig-app-1")


def test_dashboard_renders_signals_chart_and_rpc_error(seeded: redis.Redis) -> None:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]

    # RPC broker unreachable: an error on the page, the rest still renders
    errors = " ".join(str(e.value) for e in at.error)
    assert "RPC unreachable" in errors
    warnings = " ".join(str(w.value) for w in at.warning)
    assert "DERIVED from trade:stream" in warnings

    frames = [df.value for df in at.dataframe]
    signals = next(f for f in frames if "phoenix_score" in f.columns)
    assert len(signals) == 2
    btc = signals[signals["symbol"] == "BTCUSDT"].iloc[0]
    assert btc["phoenix_score"] == pytest.approx(0.91)
    assert btc["decision"] == "approved"
    assert btc["status"] == "filled @ 105"
    eth = signals[signals["symbol"] == "ETHUSDT"].iloc[0]
    assert eth["reasons"] == "PHOENIX_BELOW_THRESHOLD"

    positions = next(f for f in frames if "entry_price" in f.columns)
    assert positions["symbol"].tolist() == ["BTCUSDT"]
    assert positions["stop_loss"].tolist() == [102.9]

    events = next(f for f in frames if "detail" in f.columns)
    assert events["type"].tolist() == ["brackets_placed", "entry_filled"]

    health = next(f for f in frames if "service" in f.columns)
    services = health[health["service"].isin(names.SERVICES)]
    assert sorted(services["service"]) == sorted(names.SERVICES)
    assert set(services["up"]) == {"🔴"}

    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    # price chart + latency histogram (the trades tab needs RPC, which is down here)
    assert len(specs) == 2
    spec = next(s for s in specs if s["data"] and s["data"][0]["type"] == "candlestick")
    latency = next(s for s in specs if s["data"] and s["data"][0]["type"] == "histogram")
    assert len(latency["data"][0]["x"]) == 1  # sig-app-1: accepted -> filled
    assert "execute.trades() unavailable" in " ".join(str(w.value) for w in at.warning)
    candle = spec["data"][0]
    assert candle["type"] == "candlestick"
    assert candle["close"][-5:] == [101, 102, 103, 104, 105]
    shape_levels = sorted(s["y0"] for s in spec["layout"]["shapes"])
    assert shape_levels == [100.3, 102.9, 105.0, 107.1]
    assert at.sidebar.selectbox[0].value == "BTCUSDT"


def test_dashboard_switches_symbol(seeded: redis.Redis) -> None:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    at.sidebar.selectbox[0].select("ETHUSDT").run()
    assert not at.exception
    spec = next(s for s in (json.loads(c.proto.spec) for c in at.get("plotly_chart"))
                if s["data"] and s["data"][0]["type"] == "candlestick")
    assert "ETHUSDT" in spec["layout"]["title"]["text"]
    assert "shapes" not in spec["layout"] or not spec["layout"]["shapes"]


@pytest.mark.parametrize("risk_answers", [True, False])
def test_trades_tab_shows_risks_daily_pnl_not_a_sum_of_its_own(
        seeded: redis.Redis, monkeypatch: pytest.MonkeyPatch, risk_answers: bool) -> None:
    from dashboard import data

    today = time.strftime("%Y-%m-%dT01:00:00+00:00", time.gmtime())
    status = {"state": "ACTIVE", "equity": "10000", "daily_pnl": "-3.25",
              "daily_loss_limit": "500"}
    snapshot = data.RpcSnapshot(
        positions=[], risk_status=status if risk_answers else None,
        risk_error=None if risk_answers else "TimeoutError", fetched_at=time.time(),
        trades=[{"signal_id": "s1", "symbol": "BTCUSDT", "side": "LONG", "quantity": "0.01",
                 "entry_price": "60000", "exit_price": "60600", "realized_pnl": "6",
                 "status": "closed", "close_reason": "take_profit",
                 "opened_at": today, "closed_at": today}])

    class Poller:  # the RPC answers, without a broker
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def latest(self, wait: float = 0.0) -> data.RpcSnapshot:
            return snapshot

    monkeypatch.setattr(data, "RpcPoller", Poller)
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]

    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    daily = [s for s in specs if "Daily PnL" in s["layout"]["title"]["text"]]
    if risk_answers:
        # risk's figure (realised, net of fees, since 00:00 UTC), not today's trades (+6)
        assert [d["data"][0]["y"] for d in daily] == [[-3.25]]
    else:  # no figure of the dashboard's own making
        assert daily == []
        assert "Daily PnL unavailable" in " ".join(str(i.value) for i in at.info)
