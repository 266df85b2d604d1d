"""Closed trades, equity curve and drawdown, daily PnL, latency and lag frames."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dashboard import charts, data
from shared.lag import Lag
from shared.records import Record

TRADES = [
    {"signal_id": "a", "symbol": "BTCUSDT", "side": "LONG", "quantity": "0.01",
     "entry_price": "60000", "exit_price": "61200", "realized_pnl": "12",
     "status": "closed", "close_reason": "take_profit", "opened_at": "2026-11-23T08:00:00",
     "closed_at": "2026-11-23T09:00:00+00:00"},
    {"signal_id": "b", "symbol": "ETHUSDT", "side": "SHORT", "quantity": "0.1",
     "entry_price": "3000", "exit_price": "3060", "realized_pnl": "-6",
     "status": "closed", "close_reason": "stop_loss", "opened_at": "2026-11-23T09:30:00",
     "closed_at": "2026-11-23T10:00:00+00:00"},
    {"signal_id": "c", "symbol": "BNBUSDT", "side": "LONG", "quantity": "1",
     "entry_price": "600", "exit_price": None, "realized_pnl": None, "status": "open",
     "close_reason": None, "opened_at": "2026-11-23T11:00:00", "closed_at": None},
]


def test_closed_trades_newest_first_and_open_ones_left_out() -> None:
    frame = data.closed_trades_frame(TRADES)
    assert frame["signal_id"].tolist() == ["b", "a"]
    assert frame["realized_pnl"].tolist() == [-6.0, 12.0]


def test_equity_curve_ends_at_realised_equity_with_drawdown() -> None:
    closed = data.closed_trades_frame(TRADES)
    curve = data.equity_curve(closed, equity_now=10010.0, unrealized_now=4.0)
    assert curve["equity"].tolist() == [10000.0, 10012.0, 10006.0]
    assert curve["drawdown"].tolist() == [0.0, 0.0, -6.0]
    assert curve["drawdown_pct"].iloc[-1] == pytest.approx(-6 / 10012 * 100)
    assert data.equity_curve(closed.iloc[0:0], 1.0).empty
    fig = charts.equity_chart(curve)
    assert list(fig.data[0].y) == [10000.0, 10012.0, 10006.0]


@given(st.lists(st.floats(min_value=-1000, max_value=1000, allow_nan=False), min_size=1,
                max_size=30))
def test_drawdown_is_never_positive(pnls: list[float]) -> None:
    closed = pd.DataFrame({
        "closed_at": pd.date_range("2026-01-01", periods=len(pnls), freq="h", tz="UTC"),
        "realized_pnl": pnls})
    curve = data.equity_curve(closed, equity_now=50_000.0)
    assert (curve["drawdown"] <= 1e-9).all()
    assert curve["equity"].iloc[-1] == pytest.approx(50_000.0)


def test_daily_pnl_chart_draws_the_loss_limit() -> None:
    fig = charts.daily_pnl_chart(6.0, 500.0)
    assert fig.layout.shapes[0].y0 == -500.0


def test_pipeline_latency_and_signal_orders() -> None:
    def entry(stream_id: str, kind: str, sid: str, ts: int, **payload: object) -> data.StreamEntry:
        return data.StreamEntry(stream_id, Record(kind, dict(payload), sid, ts))

    signals = [entry("1-0", "signal_accepted", "s1", 1_000, symbol="BTCUSDT"),
               entry("2-0", "signal_scored", "s1", 1_050, symbol="BTCUSDT")]
    trades = [entry("3-0", "entry_filled", "s1", 1_420, symbol="BTCUSDT", order_id="o-9",
                    entry_price=1),
              entry("4-0", "brackets_placed", "s1", 1_500, symbol="BTCUSDT",
                    sl_client_id="sl-9", tp_client_id="tp-9")]
    assert data.pipeline_latencies(signals, trades) == [pytest.approx(0.42)]
    joined = data.join_signals(signals, [], trades)
    assert joined.loc[0, "orders"] == "o-9, sl-9, tp-9"


def test_lag_and_broker_rows() -> None:
    rows = [Lag("rabbitmq", "trade_execution", "execute", 3, consumers=1),
            Lag("kafka", "risk_events", "g", None, error="timeout")]
    frame = data.lag_frame(rows)
    assert frame["lag"].tolist()[0] == 3 and frame["error"].tolist() == ["", "timeout"]
    assert [(h.service, h.ok) for h in data.broker_rows(rows)] == [
        ("kafka", False), ("rabbitmq", True)]


def test_liquidation_distance_of_a_position() -> None:
    pos = data.Position("BTCUSDT", "LONG", 0.01, 60000.0, mark_price=60000.0,
                        liquidation_price=57000.0)
    assert data.liquidation_distance_pct(pos) == pytest.approx(5.0)
    assert data.liquidation_distance_pct(data.Position("X", "LONG", 1, 0.0)) is None
