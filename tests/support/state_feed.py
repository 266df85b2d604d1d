"""The feed's part in integration tests: the market and account state written with the real
:class:`StateWriter` into Redis, and a count of a ccxt client's requests."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import ccxt
import redis

from nameko_services.paper_exchange.server import PaperExchange
from shared.exchange import make_exchange
from shared.money import parse_brackets
from shared.settings import Settings
from shared.state import Account, Balance, Order, Position, Price, StateWriter, now_ms
from shared.symbol_rules import SymbolRules, store_rules

SYMBOLS = {"BTCUSDT": "BTC/USDT:USDT", "ETHUSDT": "ETH/USDT:USDT"}


class PaperFeed:
    """The feed's part in these tests: the paper account's REST snapshot and prices written
    with the real :class:`StateWriter` (the feed keeps the same state from its streams)."""

    def __init__(self, settings: Settings, paper: PaperExchange, client: redis.Redis) -> None:
        self.client = make_exchange(settings, base_url=paper.base_url)
        self.writer = StateWriter(client)

    def sync(self, *, market_age_ms: int = 0, account_age_ms: int = 0) -> None:
        now = now_ms()
        self.client.load_markets()
        store_rules(self.writer.redis, [
            SymbolRules.from_ccxt_market(self.client.market(sym), parse_brackets(
                self.client.fapiPrivateGetLeverageBracket({"symbol": symbol})))
            for symbol, sym in SYMBOLS.items()])
        positions = [p for p in map(Position.from_ccxt, self.client.fetch_positions()) if p]
        orders = [Order.from_ccxt(o) for sym in SYMBOLS.values()
                  for params in ({"trigger": True}, {})
                  for o in self.client.fetch_open_orders(sym, None, None, params)]
        self.writer.replace_account(Account(
            balance=Balance.from_ccxt(self.client.fetch_balance()), positions=tuple(positions),
            orders=tuple(orders), as_of_ms=now))
        prices = []
        for symbol, sym in SYMBOLS.items():
            last = Decimal(str(self.client.fetch_ticker(sym)["last"]))
            prices.append(Price(symbol=symbol, mark=last, last=last, event_ms=now,
                                updated_ms=now - market_age_ms))
        self.writer.prices(prices)
        self.writer.heartbeat(market=True, account=True, at_ms=now - account_age_ms)


def clear_state(client: redis.Redis) -> None:
    """Drop every ``phoenix95:state:*`` key (the test's Redis db owns them)."""
    for key in client.scan_iter("phoenix95:state:*"):
        client.delete(key)


def count_requests(client: ccxt.binanceusdm) -> list[str]:
    """Every HTTP request ``client`` sends from now on (ccxt's one transport method)."""
    sent: list[str] = []
    fetch = client.fetch

    def counting(url: str, method: str = "GET", headers: Any = None, body: Any = None) -> Any:
        sent.append(f"{method} {url.split('?')[0]}")
        return fetch(url, method, headers, body)

    client.fetch = counting
    return sent
