"""The paper exchange's state survives a restart; a seed makes its market reproducible.

Real HTTP servers in-process on free ports, real ccxt, a real SQLite file per test.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import ccxt
import pytest

from nameko_services.paper_exchange import PaperExchange
from shared.exchange import make_exchange
from shared.settings import Settings, load_settings

pytestmark = pytest.mark.integration
SYMBOL = "BTC/USDT:USDT"


@pytest.fixture
def settings(secrets_env: dict[str, str]) -> Settings:
    return load_settings(paper_exchange={"tick_interval_ms": 100, "seed": 7})


@pytest.fixture
def started() -> Iterator[list[PaperExchange]]:
    exchanges: list[PaperExchange] = []
    yield exchanges
    for exchange in exchanges:
        exchange.stop()


def start(settings: Settings, state: Path, started: list[PaperExchange]) -> PaperExchange:
    exchange = PaperExchange(settings, host="127.0.0.1", port=0, slippage=Decimal(0),
                             state_path=state)
    exchange.start()
    started.append(exchange)
    return exchange


def stop(exchange: PaperExchange, started: list[PaperExchange]) -> None:
    exchange.stop()
    started.remove(exchange)


def pin(paper: PaperExchange, price: float) -> Any:
    req = urllib.request.Request(
        paper.base_url + "/paper/price", method="POST",
        data=json.dumps({"symbol": "BTCUSDT", "price": price, "hold": True}).encode(),
        headers={"X-MBX-APIKEY": paper.settings.exchange.api_key.get_secret_value()})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def client(paper: PaperExchange) -> ccxt.binanceusdm:
    ex = make_exchange(paper.settings, base_url=paper.base_url)
    ex.load_markets()
    return ex


def test_position_brackets_balance_and_settings_survive_a_restart(
    settings: Settings, tmp_path: Path, started: list[PaperExchange]
) -> None:
    state = tmp_path / "paper.db"
    first = start(settings, state, started)
    pin(first, 60000)
    ex = client(first)
    ex.set_margin_mode("isolated", SYMBOL)
    ex.set_leverage(10, SYMBOL)
    entry = ex.create_order(SYMBOL, "market", "buy", 0.01, params={"clientOrderId": "rs-entry"})
    ex.create_order(SYMBOL, "STOP_MARKET", "sell", 0.01, None,
                    {"stopPrice": 58800, "reduceOnly": True, "clientOrderId": "rs-sl"})
    ex.create_order(SYMBOL, "TAKE_PROFIT_MARKET", "sell", 0.01, None,
                    {"triggerPrice": 61200, "reduceOnly": True, "clientOrderId": "rs-tp"})
    balance_before = ex.fetch_balance()["USDT"]
    stop(first, started)

    second = start(settings, state, started)
    pin(second, 60000)
    ex = client(second)

    (position,) = ex.fetch_positions([SYMBOL])
    assert position["side"] == "long" and position["contracts"] == 0.01
    assert position["entryPrice"] == 60000 and position["marginMode"] == "isolated"
    assert position["info"]["isolatedWallet"].startswith("60.")  # 600 notional at 10x
    algos = ex.fetch_open_orders(SYMBOL, params={"trigger": True})
    assert sorted((o["clientOrderId"], o["triggerPrice"]) for o in algos) == [
        ("rs-sl", 58800), ("rs-tp", 61200)]
    balance_after = ex.fetch_balance()["USDT"]
    assert (balance_after["free"], balance_after["used"], balance_after["total"]) == (
        balance_before["free"], balance_before["used"], balance_before["total"])
    assert ex.fetch_order(None, SYMBOL, params={"origClientOrderId": "rs-entry"})["id"] == \
        entry["id"]
    with pytest.raises(ccxt.MarginModeAlreadySet):
        ex.set_margin_mode("isolated", SYMBOL)
    # The restored brackets still work: the take-profit closes the restored position.
    pin(second, 61250)
    assert ex.fetch_positions([SYMBOL]) == []
    assert [t["side"] for t in ex.fetch_my_trades(SYMBOL)] == ["buy", "sell"]


def test_reset_clears_the_state_file(settings: Settings, tmp_path: Path,
                                     started: list[PaperExchange]) -> None:
    state = tmp_path / "paper.db"
    first = start(settings, state, started)
    pin(first, 60000)
    client(first).create_order(SYMBOL, "market", "sell", 0.01)
    req = urllib.request.Request(first.base_url + "/paper/reset", method="POST", headers={
        "X-MBX-APIKEY": settings.exchange.api_key.get_secret_value()})
    urllib.request.urlopen(req, timeout=5).close()
    stop(first, started)

    second = start(settings, state, started)
    ex = client(second)

    assert ex.fetch_positions([SYMBOL]) == []
    assert ex.fetch_balance()["USDT"]["total"] == 10000
    assert ex.fetch_my_trades(SYMBOL) == []


def test_same_seed_same_price_path(secrets_env: dict[str, str]) -> None:
    def path_of(seed: int) -> list[list[str]]:
        cfg = load_settings(paper_exchange={"seed": seed})
        exchange = PaperExchange(cfg, host="127.0.0.1", port=0, state_path="")
        try:
            history = [c.close for c in exchange.market.candles_1m("ETHUSDT")]
            walk = [[str(t.price) for t in exchange.tick_once()] for _ in range(200)]
            return [[repr(x) for x in history[-500:]], *walk]
        finally:
            exchange.stop()

    assert path_of(11) == path_of(11)
    assert path_of(11) != path_of(12)
