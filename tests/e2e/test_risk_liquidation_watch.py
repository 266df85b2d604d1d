"""The live liquidation watch on the running system: a position is opened, its price is
walked toward liquidation on the paper exchange, and the warning arrives through notify
(the ``notify:outbox`` stream)."""

from __future__ import annotations

import json
import math
import re
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from shared.names import ALERT_OUTBOX_STREAM, RISK_STREAM
from shared.records import Record
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e
SYMBOL, CCXT = "BNBUSDT", "BNB/USDT:USDT"


def paper_price(settings: Any, paper_url: str, price: Decimal, hold: bool) -> None:
    req = urllib.request.Request(
        paper_url + "/paper/price", method="POST",
        data=json.dumps({"symbol": SYMBOL, "price": float(price), "hold": hold}).encode(),
        headers={"X-MBX-APIKEY": settings.exchange.api_key.get_secret_value(),
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


@pytest.fixture
def pinned(settings: Any, paper_url: str, exchange: Any, rpc: Any) -> Iterator[Decimal]:
    rpc.execute.close(SYMBOL)
    price = Decimal(str(exchange.fetch_ticker(CCXT)["last"]))
    paper_price(settings, paper_url, price, hold=True)
    yield price
    rpc.execute.close(SYMBOL)
    paper_price(settings, paper_url, price, hold=False)


def _outbox_after(streams: Any, since_ms: int) -> list[str]:
    return [json.loads(f["data"]).get("text", "")
            for entry_id, f in streams.xrevrange(ALERT_OUTBOX_STREAM, count=500)
            if int(entry_id.split("-")[0]) >= since_ms]


def _position_risk(streams: Any, since_ms: int) -> list[Record]:
    return [r for r in (Record.from_stream_fields(f)
                        for _, f in streams.xrevrange(RISK_STREAM, count=500))
            if r.type == "position_risk" and r.data.get("symbol") == SYMBOL
            and r.ts >= since_ms]


def _marked_near(streams: Any, since_ms: int, price: Decimal) -> bool:
    return any(abs(Decimal(r.data["mark_price"]) - price) <= price * Decimal("0.001")
               for r in _position_risk(streams, since_ms))


def test_price_walk_toward_liquidation_raises_the_warning_through_notify(
        settings: Any, paper_url: str, exchange: Any, streams: Any, pinned: Decimal) -> None:
    market = exchange.market(CCXT)
    step = Decimal(str(market["precision"]["amount"]))
    need = Decimal(str(market["limits"]["cost"]["min"])) * Decimal("1.5") / pinned
    quantity = step * math.ceil(need / step)
    # opened straight on the exchange: risk watches what the exchange holds, whoever
    # opened it; the stop-loss sits at -2 % like execute's
    exchange.set_leverage(20, CCXT)
    try:
        exchange.set_margin_mode("isolated", CCXT)
    except Exception:  # noqa: BLE001 - already isolated
        pass
    exchange.create_order(CCXT, "market", "buy", float(quantity))
    exchange.create_order(CCXT, "STOP_MARKET", "sell", float(quantity), None,
                          {"triggerPrice": float(pinned * Decimal("0.98")),
                           "reduceOnly": True, "workingType": "MARK_PRICE"})
    position = wait_for(lambda: next((p for p in exchange.fetch_positions([CCXT])
                                      if p["contracts"]), None))
    entry = Decimal(str(position["entryPrice"]))
    liquidation = Decimal(str(position["liquidationPrice"]))
    # checked against Binance's isolated formula by hand, not against the shared function
    # the paper exchange computes it with: a notional this small is in bracket 1 of the
    # altcoin table (MMR 0.65 %, maintenance amount 0), so LP = (Q*EP - WB) / (Q*(1 - MMR))
    qty, wallet = Decimal(str(position["contracts"])), Decimal(position["info"]["isolatedWallet"])
    tick = Decimal(str(market["precision"]["price"]))
    assert abs(liquidation - (qty * entry - wallet) / (qty * (1 - Decimal("0.0065")))) <= tick
    since = int(time.time() * 1000)

    for fraction in ("0.995", "0.99", "0.985"):  # the stop at -2 % is never crossed
        target = entry * Decimal(fraction)
        paper_price(settings, paper_url, target, hold=True)
        # each step is seen by risk's watch before the next one
        wait_for(lambda t=target: _marked_near(streams, since, t), timeout=20,
                 what=f"a position_risk record of {SYMBOL} marked at {target}")

    texts = wait_for(lambda: [t for t in _outbox_after(streams, since)
                              if "LIQUIDATION_WARNING" in t and SYMBOL in t], timeout=30)
    # the warning names the liquidation price (the exchange's, or risk's own unrounded one
    # when the feed learnt the position from the user-data stream, which carries none)
    named = re.search(r"from liquidation at (\S+) ", texts[0])
    assert named is not None, texts[0]
    assert abs(Decimal(named.group(1)) - liquidation) <= tick
    # position_risk records are throttled (one a second): the walk's last step is in one of
    # them once it has been published, not necessarily in the newest at this instant
    metrics = wait_for(lambda: [
        r for r in _position_risk(streams, since)
        if Decimal(r.data["liquidation_distance"]) < Decimal("0.03")], timeout=15)
    assert abs(Decimal(metrics[0].data["liquidation_price"]) - liquidation) <= tick
    assert len([t for t in _outbox_after(streams, since)
                if "LIQUIDATION_WARNING" in t and SYMBOL in t]) == 1
