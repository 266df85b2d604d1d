"""Phoenix 95 live dashboard (read-only).

Run: ``streamlit run dashboard/app.py --server.port 8501`` (or ``python -m dashboard``).
Layout only: data access lives in :mod:`dashboard.data`, figures in :mod:`dashboard.charts`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # streamlit puts only dashboard/ on sys.path
    sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import redis  # noqa: E402
import streamlit as st  # noqa: E402

from dashboard import charts, data  # noqa: E402
from shared import names  # noqa: E402
from shared.settings import ConfigError, Settings, get_settings  # noqa: E402

REFRESH_S = 3.0
RPC_TIMEOUT_S = 2.0
HEALTH_TIMEOUT_S = 1.0
EVENT_COUNT = 500
STALE_MARKET_S = 10.0


@st.cache_resource(show_spinner=False)
def _reader(url: str) -> data.StreamReader:
    return data.StreamReader.from_url(url)


@st.cache_resource(show_spinner=False)
def _candles(url: str) -> data.CandleBook:
    return data.CandleBook()


@st.cache_resource(show_spinner=False)
def _rpc(amqp_uri: str) -> data.RpcPoller:
    return data.RpcPoller(amqp_uri, timeout=RPC_TIMEOUT_S, interval=REFRESH_S)


@st.cache_data(ttl=5, show_spinner=False)
def _health(urls: tuple[tuple[str, str], ...]) -> list[data.ServiceHealth]:
    return data.check_health(dict(urls), timeout=HEALTH_TIMEOUT_S)


def _fmt(value: object, spec: str = ",.2f") -> str:
    if isinstance(value, (int, float)):
        return format(value, spec)
    return "—" if value is None else str(value)


def _show_table(frame: pd.DataFrame, empty: str, **config: Any) -> None:
    if frame.empty:
        st.info(empty)
        return
    st.dataframe(frame, hide_index=True,
                 column_config=config or None)


def _risk_panel(settings: Settings, snapshot: data.RpcSnapshot | None) -> None:
    st.subheader("Risk & health")
    if snapshot is None:
        st.info("RPC: waiting for the first answer…")
    elif snapshot.risk_status is not None:
        status = snapshot.risk_status
        state = str(status.get("state", "?"))
        badge = {"normal": "🟢", "ok": "🟢", "halted": "🔴", "paused": "🟠"}.get(
            state.lower(), "🟡")
        st.markdown(f"**Risk state:** {badge} `{state}`")
        c1, c2 = st.columns(2)
        c1.metric("Equity", _fmt(status.get("equity")))
        c2.metric("Open positions", _fmt(status.get("open_positions"), "d")
                  if isinstance(status.get("open_positions"), int)
                  else _fmt(status.get("open_positions")))
        extra = {k: v for k, v in status.items()
                 if k not in ("state", "equity", "open_positions")}
        if extra:
            with st.expander("risk.status() details"):
                st.json(extra)
    else:
        st.error(f"risk.status() failed — {snapshot.risk_error}")
    ports = {s: settings.services.port_of(s) for s in names.SERVICES}
    urls = data.health_urls(settings.services.host, ports)
    rows = [
        {"service": h.service, "up": "🟢" if h.ok else "🔴", "status": h.status,
         "latency ms": None if h.latency_ms is None else round(h.latency_ms, 1)}
        for h in _health(tuple(sorted(urls.items())))
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True)


@st.fragment(run_every=REFRESH_S)
def live(settings: Settings) -> None:
    url = settings.redis_streams.url
    reader, book = _reader(url), _candles(url)
    poller = _rpc(settings.message_queue.amqp_uri)
    snapshot = poller.latest(wait=RPC_TIMEOUT_S + 2.0)

    events = data.read_dashboard(reader, EVENT_COUNT)
    market_error = None
    try:
        book.update(reader)
    except redis.RedisError as exc:
        market_error = f"market:stream unreadable: {exc}"
    if events.error:
        st.error(events.error)
    if market_error and market_error != events.error:
        st.error(market_error)
    if snapshot is not None and snapshot.positions_error:
        st.error(f"execute.positions() failed — {snapshot.positions_error}")

    symbol = str(st.session_state.get("symbol") or settings.trading.allowed_symbols[0])
    prices = book.prices()
    rpc_positions = snapshot.positions if snapshot is not None else None
    fallback = rpc_positions is None
    positions = (data.positions_from_trades(events.trades, prices) if fallback
                 else rpc_positions or [])

    chart_col, side_col = st.columns([3, 1])
    with chart_col:
        candles = book.candles(symbol)
        if not candles.empty:
            age = (pd.Timestamp.now(tz="UTC") - candles["time"].iloc[-1]).total_seconds()
            if age > 60 + STALE_MARKET_S:
                st.warning(f"{symbol}: no market data for {age:,.0f} s (feed stale?)")
        fig = charts.price_chart(
            candles, symbol,
            levels=charts.position_levels(positions, symbol),
            fills=data.fills_from_trades(events.trades, symbol),
        )
        st.plotly_chart(fig, key="price_chart")
    with side_col:
        st.metric(f"{symbol} last", _fmt(prices.get(symbol), ",.6g"))
        _risk_panel(settings, snapshot)

    st.subheader("Open positions")
    if fallback:
        st.warning("RPC unavailable — positions below are DERIVED from trade:stream "
                   "(last records only; may be incomplete or stale).")
    _show_table(
        data.positions_frame(positions), "No open positions.",
        unrealized_pnl=st.column_config.NumberColumn("unrealized PnL", format="%.2f"),
        margin=st.column_config.NumberColumn(format="%.2f"),
    )

    st.subheader("Signals")
    signals = data.join_signals(events.signals, events.risk, events.trades)
    _show_table(
        signals.drop(columns=["signal_id"]) if not signals.empty else signals,
        "No signals yet.",
        time=st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
        phoenix_score=st.column_config.NumberColumn("phoenix score", format="%.3f"),
        final_confidence=st.column_config.NumberColumn("final conf.", format="%.3f"),
    )

    st.subheader("Recent trade events")
    _show_table(
        data.trade_events_frame(events.trades).head(100), "No trade events yet.",
        time=st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
    )
    st.caption(f"Refreshed {pd.Timestamp.now(tz='UTC'):%H:%M:%S} UTC every {REFRESH_S:g} s · "
               f"streams: last {EVENT_COUNT} events each · read-only view")


def main() -> None:
    st.set_page_config(page_title="Phoenix 95", page_icon="🔥", layout="wide")
    try:
        settings = get_settings()
    except ConfigError as exc:
        st.error(str(exc))
        st.stop()
        return
    st.title("🔥 Phoenix 95 — live dashboard")
    st.caption(f"exchange mode **{settings.exchange.mode}** · leverage "
               f"{settings.leverage.leverage}x {settings.leverage.margin_mode} · read-only")
    book = _candles(settings.redis_streams.url)
    options = list(dict.fromkeys([*settings.trading.allowed_symbols, *book.symbols()]))
    st.sidebar.selectbox("Symbol", options, key="symbol")
    st.sidebar.caption(f"Redis: {settings.redis_streams.url.rsplit('@', 1)[-1]}")
    st.sidebar.caption(f"RPC: {settings.message_queue.host}:{settings.message_queue.port}"
                       f"{settings.message_queue.virtual_host}")
    live(settings)


main()
