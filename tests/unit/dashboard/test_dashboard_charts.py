"""Plotly figure builders."""

from __future__ import annotations

import pandas as pd

from dashboard import candles, charts
from dashboard.rows import Fill, Position


def _candles() -> pd.DataFrame:
    times = pd.date_range("2024-01-01", periods=3, freq="1min", tz="UTC")
    return pd.DataFrame({"time": times, "open": [1.0, 2.0, 3.0], "high": [2.0, 3.0, 4.0],
                         "low": [0.5, 1.5, 2.5], "close": [2.0, 3.0, 3.5],
                         "volume": [1.0, 1.0, 1.0]})


def _position(**overrides: object) -> Position:
    base: dict[str, object] = {"symbol": "BTCUSDT", "side": "long", "quantity": 1.0,
                               "entry_price": 3.0, "stop_loss": 2.94, "take_profit": 3.06,
                               "liquidation_price": 2.86}
    base.update(overrides)
    return Position.from_mapping(base)


def test_position_levels_for_the_chosen_symbol_only() -> None:
    positions = [_position(), _position(symbol="ETHUSDT", side="short", entry_price=10.0)]
    levels = charts.position_levels(positions, "btcusdt")
    assert [(lv.kind, lv.price) for lv in levels] == [
        ("entry", 3.0), ("stop_loss", 2.94), ("take_profit", 3.06), ("liquidation", 2.86)]
    assert levels[1].label == "LONG SL 2.94"
    short = charts.position_levels(positions, "ETHUSDT")
    assert [lv.kind for lv in short] == ["entry", "stop_loss", "take_profit", "liquidation"]
    assert short[0].label.startswith("SHORT entry")


def test_position_without_brackets_draws_only_entry() -> None:
    pos = _position(stop_loss=None, take_profit=None, liquidation_price=None)
    assert [lv.kind for lv in charts.position_levels([pos], "BTCUSDT")] == ["entry"]


def test_price_chart_candles_levels_and_fills() -> None:
    candles = _candles()
    levels = charts.position_levels([_position()], "BTCUSDT")
    fills = [
        Fill(candles["time"].iloc[1], "BTCUSDT", "long", 3.0, 1.0, "entry"),
        Fill(candles["time"].iloc[2], "BTCUSDT", "short", 3.4, 2.0, "entry"),
        Fill(candles["time"].iloc[2], "BTCUSDT", "", 3.5, 1.0, "close"),
    ]
    fig = charts.price_chart(candles, "BTCUSDT", levels, fills)

    candle = fig.data[0]
    assert candle.type == "candlestick"
    assert list(candle.close) == [2.0, 3.0, 3.5]
    assert list(candle.open) == [1.0, 2.0, 3.0]

    entries = next(t for t in fig.data if t.name == "entry fills")
    assert list(entries.y) == [3.0, 3.4]
    assert list(entries.marker.symbol) == ["triangle-up", "triangle-down"]
    closes = next(t for t in fig.data if t.name == "closes")
    assert list(closes.y) == [3.5]

    shapes = fig.layout.shapes
    assert sorted(s.y0 for s in shapes) == [2.86, 2.94, 3.0, 3.06]
    assert all(s.y0 == s.y1 for s in shapes)  # horizontal
    stop = next(s for s in shapes if s.y0 == 2.94)
    assert stop.line.color == charts.LEVEL_STYLES["stop_loss"][0]
    texts = {a.text for a in fig.layout.annotations}
    assert {"LONG SL 2.94", "LONG TP 3.06", "LONG liq 2.86", "LONG entry 3"} <= texts
    assert fig.layout.title.text == "BTCUSDT · 1m"
    assert fig.layout.xaxis.rangeslider.visible is False


def test_price_chart_without_data_is_still_a_figure() -> None:
    empty = pd.DataFrame(columns=candles.CANDLE_COLUMNS)
    fig = charts.price_chart(empty, "ETHUSDT")
    assert len(fig.data) == 1 and fig.data[0].type == "candlestick"
    assert len(fig.data[0].x) == 0
    assert "no market data" in fig.layout.title.text
    assert not fig.layout.shapes
