"""Plotly figure builders for the dashboard (pure functions, no Streamlit)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go

from dashboard.data import Fill, Position

LEVEL_STYLES: dict[str, tuple[str, str]] = {
    # kind -> (colour, dash)
    "entry": ("#1f77b4", "solid"),
    "stop_loss": ("#d62728", "dash"),
    "take_profit": ("#2ca02c", "dash"),
    "liquidation": ("#7f0000", "dot"),
}
LEVEL_LABELS = {"entry": "entry", "stop_loss": "SL", "take_profit": "TP",
                "liquidation": "liq"}


@dataclass(frozen=True)
class Level:
    """One horizontal price level drawn across the chart."""

    kind: str  # entry | stop_loss | take_profit | liquidation
    price: float
    label: str


def _is_long(side: str) -> bool:
    return side.lower() in ("long", "buy")


def position_levels(positions: Sequence[Position], symbol: str) -> list[Level]:
    """Entry, SL, TP and liquidation levels of every open position on ``symbol``."""
    levels: list[Level] = []
    for pos in positions:
        if pos.symbol.upper() != symbol.upper():
            continue
        side = "LONG" if _is_long(pos.side) else "SHORT"
        for kind, price in (
            ("entry", pos.entry_price),
            ("stop_loss", pos.stop_loss),
            ("take_profit", pos.take_profit),
            ("liquidation", pos.liquidation_price),
        ):
            if price:
                levels.append(Level(kind, float(price),
                                    f"{side} {LEVEL_LABELS[kind]} {float(price):,.6g}"))
    return levels


def price_chart(
    candles: pd.DataFrame,
    symbol: str,
    levels: Sequence[Level] = (),
    fills: Sequence[Fill] = (),
    height: int = 480,
) -> go.Figure:
    """Candlestick chart of ``symbol`` with position levels and fill markers.

    The first trace is always the candlestick (possibly empty); fills are one scatter
    trace per kind ("entry fills", "closes"); levels are layout shapes with annotations.
    """
    fig = go.Figure()
    fig.add_trace(
        go.Candlestick(
            x=list(candles["time"]) if not candles.empty else [],
            open=list(candles["open"]) if not candles.empty else [],
            high=list(candles["high"]) if not candles.empty else [],
            low=list(candles["low"]) if not candles.empty else [],
            close=list(candles["close"]) if not candles.empty else [],
            name=symbol,
            increasing_line_color="#26a69a",
            decreasing_line_color="#ef5350",
        )
    )
    for kind, name in (("entry", "entry fills"), ("close", "closes")):
        chosen = [f for f in fills if f.kind == kind]
        if not chosen:
            continue
        fig.add_trace(
            go.Scatter(
                x=[f.time for f in chosen],
                y=[f.price for f in chosen],
                mode="markers",
                name=name,
                marker={
                    "symbol": [
                        ("triangle-up" if _is_long(f.side) else "triangle-down")
                        if kind == "entry" else "x"
                        for f in chosen
                    ],
                    "size": 13,
                    "color": [
                        ("#2ca02c" if _is_long(f.side) else "#d62728") if kind == "entry"
                        else "#444444"
                        for f in chosen
                    ],
                    "line": {"width": 1, "color": "#000000"},
                },
                text=[f"{f.side} {f.quantity:g} @ {f.price:,.6g}" for f in chosen],
                hoverinfo="text+x",
            )
        )
    for level in levels:
        colour, dash = LEVEL_STYLES.get(level.kind, ("#888888", "dot"))
        fig.add_hline(
            y=level.price,
            line={"color": colour, "dash": dash, "width": 1.5},
            annotation_text=level.label,
            annotation_position="top left",
            annotation_font_color=colour,
        )
    title = f"{symbol} · 1m" if not candles.empty else f"{symbol} · no market data yet"
    fig.update_layout(
        title=title,
        height=height,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        xaxis_rangeslider_visible=False,
        legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right",
                "yanchor": "bottom"},
        uirevision=symbol,  # keep the user's zoom across auto-refreshes
        yaxis_title="price",
    )
    return fig


def equity_chart(curve: pd.DataFrame, height: int = 360) -> go.Figure:
    """Realised equity (top) and drawdown from the running peak (bottom)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3],
                        vertical_spacing=0.05)
    times = list(curve["time"]) if not curve.empty else []
    fig.add_trace(go.Scatter(x=times, y=list(curve["equity"]) if times else [],
                             mode="lines+markers", name="equity", line={"color": "#1f77b4"}),
                  row=1, col=1)
    fig.add_trace(go.Scatter(x=times, y=list(curve["drawdown_pct"]) if times else [],
                             mode="lines", fill="tozeroy", name="drawdown %",
                             line={"color": "#d62728"}), row=2, col=1)
    fig.update_layout(title="Equity and drawdown" if times else "Equity: no closed trades yet",
                      height=height, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      showlegend=False, uirevision="equity")
    fig.update_yaxes(title_text="USDT", row=1, col=1)
    fig.update_yaxes(title_text="DD %", row=2, col=1)
    return fig


def daily_pnl_chart(pnl: float, limit: float | None, height: int = 220) -> go.Figure:
    """Risk's daily PnL (realised, net of fees, since 00:00 UTC) as a bar against the
    daily loss limit (a line at -limit)."""
    colour = "#2ca02c" if pnl >= 0 else "#d62728"
    fig = go.Figure(go.Bar(x=["today"], y=[pnl], marker_color=colour, name="daily PnL",
                           text=[f"{pnl:,.2f}"], textposition="auto"))
    if limit:
        fig.add_hline(y=-abs(limit), line={"color": "#7f0000", "dash": "dash"},
                      annotation_text=f"loss limit -{abs(limit):,.2f}")
    fig.update_layout(title="Daily PnL, realised net of fees (USDT)", height=height,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10}, uirevision="daily")
    return fig


def latency_histogram(seconds: Sequence[float], height: int = 260) -> go.Figure:
    """Signal-to-fill pipeline latency, in milliseconds."""
    fig = go.Figure(go.Histogram(x=[s * 1000 for s in seconds], nbinsx=30,
                                 marker_color="#9467bd", name="signal -> fill"))
    fig.update_layout(title=f"Pipeline latency, signal -> fill (n={len(seconds)})",
                      xaxis_title="ms", yaxis_title="signals", height=height,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10}, uirevision="latency")
    return fig
