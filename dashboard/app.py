"""Phoenix 95 live dashboard.

Run: ``streamlit run dashboard/app.py --server.port 8501`` (or ``python -m dashboard``).
Layout only: data access lives in :mod:`dashboard.data`, figures in :mod:`dashboard.charts`.
Every read is bounded or runs in a background thread (RPC, lag probes), so a slow service
never blocks a refresh. The only writes are the sidebar controls (pause, halt, resume,
close), which go through the services' HTTP endpoints with the API key the user types in
and need an explicit confirmation.
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

from dashboard import auth, charts, data  # noqa: E402
from shared import lag as lag_probe  # noqa: E402
from shared import names  # noqa: E402
from shared.redis_conn import redis_client  # noqa: E402
from shared.settings import (  # noqa: E402
    ConfigError,
    RedisStreamsSettings,
    Settings,
    get_settings,
)
from shared.web import api_key_matches  # noqa: E402

REFRESH_S = 3.0
RPC_TIMEOUT_S = 2.0
HEALTH_TIMEOUT_S = 3.0  # /ready asks the broker, Redis and the database
EVENT_COUNT = 500
STALE_MARKET_S = 10.0


@st.cache_resource(show_spinner=False)
def _reader(url: str, _redis: RedisStreamsSettings) -> data.StreamReader:
    return data.StreamReader.from_settings(_redis)


@st.cache_resource(show_spinner=False)
def _candles(url: str) -> data.CandleBook:
    return data.CandleBook()


@st.cache_resource(show_spinner=False)
def _rpc(amqp_uri: str) -> data.RpcPoller:
    return data.RpcPoller(amqp_uri, timeout=RPC_TIMEOUT_S, interval=REFRESH_S)


@st.cache_resource(show_spinner=False)
def _lags(amqp_uri: str, redis_url: str, kafka: str, group: str,
          _redis: RedisStreamsSettings) -> data.LagPoller:
    def probe() -> list[lag_probe.Lag]:
        client = redis_client(_redis, socket_timeout=2, socket_connect_timeout=2)
        try:
            rows = lag_probe.rabbitmq_lag(amqp_uri, timeout=2.0)
            rows += lag_probe.redis_lag(client)
        finally:
            client.close()
        return rows + lag_probe.kafka_lag(kafka, group, timeout=2.0)

    return data.LagPoller(probe, interval=10.0)


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


def _risk_panel(settings: Settings, snapshot: data.RpcSnapshot | None,
                lags: list[lag_probe.Lag]) -> None:
    st.subheader("Risk & health")
    if snapshot is None:
        st.info("RPC: waiting for the first answer…")
    elif snapshot.risk_status is not None:
        status = snapshot.risk_status
        state = str(status.get("state", "?"))
        badge = {"normal": "🟢", "ok": "🟢", "halted": "🔴", "paused": "🟠"}.get(
            state.lower(), "🟡")
        st.markdown(f"**Risk state:** {badge} `{state}`")
        if status.get("reason"):
            st.caption(f"reason: {status['reason']}")
        open_positions = status.get("open_positions")
        c1, c2 = st.columns(2)
        c1.metric("Equity", _fmt(data._num(status.get("equity"))))
        c2.metric("Open positions", len(open_positions) if isinstance(open_positions, list)
                  else _fmt(open_positions))
        c3, c4 = st.columns(2)
        c3.metric("Exposure", _fmt(data._num(status.get("exposure"))))
        usage = data._num(status.get("margin_usage"))
        c4.metric("Margin usage", "—" if usage is None else f"{usage * 100:.1f}%")
        extra = {k: v for k, v in status.items()
                 if k not in ("state", "equity", "open_positions", "reason")}
        if extra:
            with st.expander("risk.status() details"):
                st.json(extra)
    else:
        st.error(f"risk.status() failed — {snapshot.risk_error}")
    urls = data.ready_urls(settings.services, names.SERVICES)  # readiness, not liveness
    rows = [
        {"service": h.service, "up": "🟢" if h.ok else "🔴", "status": h.status,
         "latency ms": None if h.latency_ms is None else round(h.latency_ms, 1)}
        for h in [*_health(tuple(sorted(urls.items()))), *data.broker_rows(lags)]
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True)


@st.fragment(run_every=REFRESH_S)
def live(settings: Settings) -> None:
    url = settings.redis_streams.url
    reader, book = _reader(url, settings.redis_streams), _candles(url)
    poller = _rpc(settings.message_queue.amqp_uri)
    snapshot = poller.latest(wait=RPC_TIMEOUT_S + 2.0)
    lags, lags_at = _lags(settings.message_queue.amqp_uri, url,
                          settings.kafka.bootstrap_servers,
                          settings.kafka.consumer_group, settings.redis_streams).latest()

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
        _risk_panel(settings, snapshot, lags)

    st.subheader("Open positions")
    if fallback:
        st.warning("RPC unavailable — positions below are DERIVED from trade:stream "
                   "(last records only; may be incomplete or stale).")
    for p in positions:  # one readable line each, above the table
        dist = data.liquidation_distance_pct(p)
        st.markdown(
            f"**{p.symbol}** {p.side} {p.quantity:g} @ {p.entry_price:g} · "
            f"uPnL {_fmt(p.unrealized_pnl)} · SL {_fmt(p.stop_loss, 'g')} · "
            f"TP {_fmt(p.take_profit, 'g')} · liq {_fmt(p.liquidation_price, 'g')}"
            + (f" ({dist:.2f}% away)" if dist is not None else ""))
    frame = data.positions_frame(positions)
    if not frame.empty:
        frame["liq_distance_pct"] = [data.liquidation_distance_pct(p) for p in positions]
    _show_table(
        frame, "No open positions.",
        unrealized_pnl=st.column_config.NumberColumn("unrealized PnL", format="%.2f"),
        margin=st.column_config.NumberColumn(format="%.2f"),
        liq_distance_pct=st.column_config.NumberColumn("liq. distance %", format="%.2f"),
    )

    tab_signals, tab_trades, tab_pipeline = st.tabs(
        ["Signals", "Trades & PnL", "Pipeline: latency & lag"])
    with tab_signals:
        _signals_tab(events)
    with tab_trades:
        _trades_tab(settings, snapshot, positions, events)
    with tab_pipeline:
        _pipeline_tab(events, lags, lags_at)
    st.caption(f"Refreshed {pd.Timestamp.now(tz='UTC'):%H:%M:%S} UTC every {REFRESH_S:g} s · "
               f"streams: last {EVENT_COUNT} events each")


def _signals_tab(events: data.Dashboard) -> None:
    signals = data.join_signals(events.signals, events.risk, events.trades)
    _show_table(
        signals.drop(columns=["signal_id"]) if not signals.empty else signals,
        "No signals yet.",
        time=st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
        phoenix_score=st.column_config.NumberColumn("phoenix score", format="%.3f"),
        final_confidence=st.column_config.NumberColumn("final conf.", format="%.3f"),
    )
    trade_events = data.trade_events_frame(events.trades)
    if not signals.empty:
        ids = [s for s in signals["signal_id"].tolist() if s]
        chosen = st.selectbox("Signal → its orders and trade events", ["(all)", *ids],
                              key="signal_drill")
        if chosen != "(all)" and not trade_events.empty:
            trade_events = trade_events[trade_events["signal_id"] == chosen]
    st.subheader("Recent trade events")
    _show_table(
        trade_events.head(100), "No trade events yet.",
        time=st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
    )


def _trades_tab(settings: Settings, snapshot: data.RpcSnapshot | None,
                positions: list[data.Position], events: data.Dashboard) -> None:
    if snapshot is None or snapshot.trades is None:
        error = snapshot.trades_error if snapshot is not None else "waiting for RPC"
        st.warning(f"execute.trades() unavailable — {error}")
        return
    closed = data.closed_trades_frame(snapshot.trades)
    status = snapshot.risk_status or {}
    equity = data._num(status.get("equity"))
    unrealized = sum(p.unrealized_pnl or 0.0 for p in positions)
    # risk's figure, the one definition of daily PnL (nameko_services/risk/ledger.py)
    today = data._num(status.get("daily_pnl"))
    limit = data._num(status.get("daily_loss_limit"))
    c1, c2 = st.columns([2, 1])
    with c1:
        st.plotly_chart(charts.equity_chart(data.equity_curve(closed, equity, unrealized)),
                        key="equity_chart")
    with c2:
        if today is None:
            st.info("Daily PnL unavailable: risk.status() did not answer")
        else:
            st.plotly_chart(charts.daily_pnl_chart(today, limit), key="daily_pnl_chart")
    st.subheader("Closed trades")
    _show_table(closed, "No closed trades yet.",
                closed_at=st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
                realized_pnl=st.column_config.NumberColumn("realised PnL", format="%.2f"))


def _pipeline_tab(events: data.Dashboard, lags: list[lag_probe.Lag], lags_at: float) -> None:
    latencies = data.pipeline_latencies(events.signals, events.trades)
    st.plotly_chart(charts.latency_histogram(latencies), key="latency_chart")
    st.subheader("Consumer lag (RabbitMQ queues, Redis stream groups, Kafka topics)")
    if not lags:
        st.info("Lag probes: waiting for the first answer…")
        return
    _show_table(data.lag_frame(lags), "No lag data.")
    st.caption(f"probed {pd.Timestamp(lags_at, unit='s', tz='UTC'):%H:%M:%S} UTC")


CONTROL_ACTIONS = ("pause (REDUCING)", "halt (HALTED)", "resume (ACTIVE)", "close a position",
                   "close every position")


def _controls(settings: Settings) -> None:
    """State-changing controls: API key + explicit confirmation, then the service's HTTP."""
    with st.sidebar.expander("Controls (need the API key)"):
        with st.form("controls", clear_on_submit=False):
            api_key = st.text_input("API key (X-API-Key)", type="password")
            action = st.selectbox("Action", CONTROL_ACTIONS)
            symbol = st.selectbox("Symbol (for close)", settings.trading.allowed_symbols)
            confirm = st.checkbox("I confirm this changes live trading")
            submitted = st.form_submit_button("Apply")
        if not submitted:
            return
        if not confirm:
            st.warning("Tick the confirmation first.")
            return
        known = settings.security.api_key_values()
        if not api_key_matches(api_key, known):  # bytes compare: any Unicode input is safe
            st.error("Wrong API key.")
            return
        svc = settings.services
        if action.startswith(("pause", "halt", "resume")):
            state = {"pause": "REDUCING", "halt": "HALTED", "resume": "ACTIVE"}[action.split()[0]]
            ok, text = data.send_control(f"{svc.url_of(names.RISK)}/update", api_key,
                                         {"state": state, "reason": "dashboard"})
        elif action == "close a position":
            ok, text = data.send_control(f"{svc.url_of(names.EXECUTE)}/close", api_key,
                                         {"symbol": symbol})
        else:
            ok, text = data.send_control(f"{svc.url_of(names.EXECUTE)}/close", api_key,
                                         {"all": True})
        (st.success if ok else st.error)(f"{action}: {text[:500]}")


def main() -> None:
    st.set_page_config(page_title="Phoenix 95", page_icon="🔥", layout="wide")
    try:
        settings = get_settings()
    except ConfigError as exc:
        st.error(str(exc))
        st.stop()
        return
    if not auth.require_login(settings.dashboard):
        st.stop()
        return
    st.title("🔥 Phoenix 95 — live dashboard")
    st.caption(f"exchange mode **{settings.exchange.mode}** · leverage "
               f"{settings.leverage.leverage}x {settings.leverage.margin_mode}")
    book = _candles(settings.redis_streams.url)
    options = list(dict.fromkeys([*settings.trading.allowed_symbols, *book.symbols()]))
    wanted = str(st.query_params.get("symbol", "")).upper()  # ?symbol=ETHUSDT deep link
    if wanted in options and "symbol" not in st.session_state:
        st.session_state["symbol"] = wanted
    st.sidebar.selectbox("Symbol", options, key="symbol")
    st.sidebar.caption(f"Redis: {settings.redis_streams.url.rsplit('@', 1)[-1]}")
    st.sidebar.caption(f"RPC: {settings.message_queue.host}:{settings.message_queue.port}"
                       f"{settings.message_queue.virtual_host}")
    _controls(settings)
    live(settings)


main()
