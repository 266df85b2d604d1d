"""A market replayed from an OHLCV CSV, seen through ccxt like any other market."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from nameko_services.paper_exchange import PaperExchange
from nameko_services.paper_exchange.replay import load_csv
from shared.exchange import make_exchange
from shared.settings import load_settings

pytestmark = pytest.mark.integration
SAMPLE = Path(__file__).parents[2] / "nameko_services/paper_exchange/data/btcusdt_1m_sample.csv"
SYMBOL = "BTC/USDT:USDT"


@pytest.fixture
def paper(secrets_env: dict[str, str]) -> Iterator[PaperExchange]:
    # Relative paths are anchored at the repository root, like database.url.
    settings = load_settings(paper_exchange={
        "replay_csv": "nameko_services/paper_exchange/data/btcusdt_1m_sample.csv"})
    exchange = PaperExchange(settings, host="127.0.0.1", port=0, state_path="")
    yield exchange
    exchange.stop()


def freeze(paper: PaperExchange) -> None:
    """Hold the replay where it is, so the ticker thread cannot move it under the test."""
    paper.market.pin("BTCUSDT", paper.market.price("BTCUSDT"), hold=True)


def test_replayed_symbol_serves_the_file_through_ccxt(paper: PaperExchange) -> None:
    candles = load_csv(SAMPLE)["BTCUSDT"]
    for _ in range(4 * 12):  # twelve candles, driven by hand instead of the ticker thread
        paper.tick_once()
    freeze(paper)
    paper.start()
    ex = make_exchange(paper.settings, base_url=paper.base_url)
    ex.load_markets()

    ohlcv = ex.fetch_ohlcv(SYMBOL, "1m", limit=100)

    assert [c[0] for c in ohlcv] == [c.open_time for c in candles[:13]]
    assert ohlcv[0][1:5] == [candles[0].open, candles[0].high, candles[0].low, candles[0].close]
    assert ex.fetch_ticker(SYMBOL)["last"] == candles[12].open
    assert ex.fetch_ohlcv("ETH/USDT:USDT", "1m", limit=100)[-1][0] > candles[-1].open_time


def test_orders_fill_at_the_replayed_price(paper: PaperExchange) -> None:
    freeze(paper)
    paper.start()
    ex = make_exchange(paper.settings, base_url=paper.base_url)
    ex.load_markets()

    order = ex.create_order(SYMBOL, "market", "buy", 0.01)

    first_open = Decimal(repr(load_csv(SAMPLE)["BTCUSDT"][0].open))
    slipped = (first_open * Decimal("1.0001")).quantize(Decimal("0.1"))  # 1 bp taker slippage
    assert Decimal(str(order["average"])) == slipped
