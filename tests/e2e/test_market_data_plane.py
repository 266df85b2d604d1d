"""The market and account data plane on the running system: the feed is the one writer of
market:stream and of the state, an alert costs the exchange three REST requests, and a
stopped feed makes risk refuse new entries until it is back.

``scripts/test`` runs the system in ``live`` mode pointed at a separately started paper
exchange (``exchange.rest_url`` / ``exchange.ws_url``): the live code path end to end.
"""

from __future__ import annotations

import re
import time
import urllib.request
import uuid
from decimal import Decimal
from typing import Any

import pytest

from shared.exchange import rest_origin
from shared.names import MARKET_STREAM, REC_EXCHANGE_ORDER, REC_TICK, TRADE_STREAM
from shared.records import Record
from shared.state import MARKET_STALE, StateReader
from tests.e2e.test_flow import alert, post, wait_for

pytestmark = pytest.mark.e2e
SYMBOL, CCXT = "ETHUSDT", "ETH/USDT:USDT"
BRACKETS = {"STOP_MARKET", "TAKE_PROFIT_MARKET"}


def _requests_total(settings: Any) -> dict[str, float]:
    origin = rest_origin(settings) or settings.paper_exchange.base_url
    with urllib.request.urlopen(origin + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'^paper_exchange_requests_total\{([^}]*)\}\s+(\S+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels["path"] != "/metrics":  # this very scrape is not the trade's cost
            out[f"{labels['method']} {labels['path']}"] = float(m.group(2))
    return out


def _armed(streams: Any, since: str) -> bool:
    legs = set()
    for _, fields in streams.xrange(TRADE_STREAM, min=f"({since}", count=5000):
        rec = Record.from_stream_fields(fields)
        order = rec.data.get("order") or {}
        if rec.type == REC_EXCHANGE_ORDER and rec.data.get("event") == "ALGO_UPDATE" \
                and order.get("symbol") == SYMBOL and order.get("status") == "NEW":
            legs.add(order.get("type"))
    return legs >= BRACKETS


def _last_id(streams: Any, stream: str) -> str:
    last = streams.xrevrange(stream, count=1)
    return str(last[0][0]) if last else "0-0"


def _trade(settings: Any, streams: Any) -> str:
    since = _last_id(streams, TRADE_STREAM)
    status, body = post(settings.services.url_of("brain") + "/webhook",
                        alert(settings, ticker=SYMBOL), content_type="text/plain")
    assert status == 202, body
    wait_for(lambda: _armed(streams, since) or None, timeout=20)
    return str(body["signal_id"])


def test_the_feed_writes_fresh_ticks_of_every_symbol_to_the_market_stream(settings, streams):
    now = time.time() * 1000
    fresh: set[str] = set()
    for _, fields in streams.xrevrange(MARKET_STREAM, count=500):
        rec = Record.from_stream_fields(fields)
        if rec.type == REC_TICK and now - int(rec.data.get("event_ms") or 0) < 10_000:
            assert Decimal(rec.data["mark_price"]) > 0
            fresh.add(rec.data["symbol"])

    assert fresh == set(settings.trading.allowed_symbols)
    state = StateReader(streams, settings)
    assert state.account().balance.wallet > 0  # the user-data stream's account is fresh
    assert len(state.candles(SYMBOL, "5m", 100)) == 100  # brain's features have their candles


def test_a_warm_alert_costs_the_exchange_three_rest_requests(settings, streams, rpc):
    rpc.execute.close(SYMBOL)
    _trade(settings, streams)  # warms the symbol: pre-flight and caches
    rpc.execute.close(SYMBOL)
    # the close settled before counting: the feed's account state is flat on the symbol,
    # no leg left (what a reconciliation would react to)
    state = StateReader(streams, settings)
    wait_for(lambda: (acct := state.account(fresh=False)).position(SYMBOL) is None
             and not acct.open_orders(SYMBOL), timeout=20, what=f"{SYMBOL} flat, no legs")

    # execute's 60 s safety sweep reads the exchange when it meets a trade half-booked
    # (GET positionRisk/openAlgoOrders): that read is the sweep's, not the alert's. A sweep
    # runs at most once a minute, so a second trade right after cannot meet one again.
    for _attempt in range(2):
        before = _requests_total(settings)
        _trade(settings, streams)
        spent = {k: v - before.get(k, 0) for k, v in _requests_total(settings).items()
                 if v != before.get(k, 0)}
        rpc.execute.close(SYMBOL)
        if not any(k.startswith("GET ") for k in spent):
            break
        wait_for(lambda: (acct := state.account(fresh=False)).position(SYMBOL) is None
                 and not acct.open_orders(SYMBOL), timeout=20, what=f"{SYMBOL} flat again")

    assert spent == {"POST /fapi/v1/order": 1, "POST /fapi/v1/algoOrder": 2}


def _supervisor(settings: Any) -> Any:
    from scripts import supervise

    run_dir = settings.services.run_path()
    if not supervise.answering(run_dir):
        pytest.skip("the system is not running under scripts/up's supervisord")
    return supervise.client(run_dir)


def _intent() -> dict[str, Any]:
    """An intent risk refuses on its own merits when the state is fresh (leverage above
    the cap), so the test never holds a reservation that later tests would meet."""
    sid = uuid.uuid4().hex
    return {"signal_id": sid, "idempotency_key": f"e2e:{sid}", "symbol": "DOGEUSDT",
            "side": "LONG", "quantity": "100", "reference_price": "0.15", "leverage": 50,
            "stop_loss": "0.147", "take_profit": "0.153", "margin": "0.3"}


def test_a_stopped_feed_makes_risk_refuse_entries_until_it_is_back(settings, rpc):
    supervisor = _supervisor(settings)
    supervisor.supervisor.stopProcess("feed", True)
    try:
        stopped = time.monotonic()
        refused = wait_for(lambda: (lambda d: d if MARKET_STALE in d["reasons"] else None)(
            rpc.risk.check(_intent())), timeout=20)
        took = time.monotonic() - stopped
    finally:
        supervisor.supervisor.startProcess("feed", True)

    assert not refused["approved"] and took <= 15
    # the feed resynchronises by itself and the same check is no longer refused as stale
    resumed = wait_for(lambda: (lambda d: d if MARKET_STALE not in d["reasons"] else None)(
        rpc.risk.check(_intent())), timeout=30)
    assert "account_state_stale" not in resumed["reasons"]
    assert "leverage_exceeded" in resumed["reasons"]  # checked on fresh state again
