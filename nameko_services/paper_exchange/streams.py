"""Binance USD-M market stream names, their routes, and their exact payloads.

Names follow Binance (``btcusdt@markPrice@1s``, ``btcusdt@kline_1m``, ``!bookTicker``...);
the symbol part is matched case-insensitively, the rest exactly. Routes as on Binance since
the 2026 split: ``bookTicker`` / ``trade`` (and depth, not simulated) on ``/public``,
everything else on ``/market``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from .market import INTERVAL_MS, SYMBOLS, Candle
from .models import num
from .views import fmt_candle

Route = Literal["public", "market"]
Payload = dict[str, Any]
FUNDING_MS = 8 * 3_600_000

_SYMBOL_STREAM = re.compile(
    r"^(?P<sym>[a-z0-9]+)@(?P<kind>markPrice@1s|markPrice|kline_(?P<iv>\w+)|miniTicker|ticker"
    r"|bookTicker|aggTrade|trade)$")
_ALL_STREAMS = {
    "!markPrice@arr": "markPriceArr", "!markPrice@arr@1s": "markPriceArr1s",
    "!miniTicker@arr": "miniTickerArr", "!ticker@arr": "tickerArr",
    "!bookTicker": "bookTickerAll",
}
PUBLIC_KINDS = frozenset({"bookTicker", "bookTickerAll", "trade"})


@dataclass(frozen=True)
class Stream:
    name: str  # as the client spelled it: echoed in LIST_SUBSCRIPTIONS and the wrapper
    kind: str  # markPrice, markPrice1s, kline, miniTicker, ticker, bookTicker, aggTrade, ...
    symbol: str | None = None  # BTCUSDT; None for the all-market streams
    interval: str | None = None

    @property
    def route(self) -> Route:
        return "public" if self.kind in PUBLIC_KINDS else "market"


def parse_stream(name: str) -> Stream | None:
    """The stream a name denotes, or None when Binance would answer "invalid stream"."""
    if name in _ALL_STREAMS:
        return Stream(name, _ALL_STREAMS[name])
    sym, sep, rest = name.partition("@")
    match = _SYMBOL_STREAM.match(f"{sym.lower()}@{rest}") if sep else None
    if match is None:
        return None
    symbol = match["sym"].upper()
    if symbol not in SYMBOLS:
        return None
    kind = match["kind"]
    if kind.startswith("kline_"):
        if match["iv"] not in INTERVAL_MS:
            return None
        return Stream(name, "kline", symbol, match["iv"])
    return Stream(name, "markPrice1s" if kind == "markPrice@1s" else kind, symbol)


def next_funding(now: int) -> int:
    return now - now % FUNDING_MS + FUNDING_MS


def mark_price(symbol: str, mark: Decimal, now: int) -> Payload:
    p = str(mark)
    return {"e": "markPriceUpdate", "E": now, "s": symbol, "p": p, "ap": p, "i": p, "P": p,
            "r": "0.00000000", "T": next_funding(now)}


def kline(symbol: str, interval: str, candle: Candle, closed: bool, now: int) -> Payload:
    size = INTERVAL_MS[interval]
    row = fmt_candle(candle, size, SYMBOLS[symbol].tick_size)
    count = int(row[8])
    return {"e": "kline", "E": now, "s": symbol, "k": {
        "t": row[0], "T": row[6], "s": symbol, "i": interval,
        "f": 1 if count else -1, "L": count if count else -1,
        "o": row[1], "c": row[4], "h": row[2], "l": row[3], "v": row[5], "n": count,
        "x": closed, "q": row[7], "V": row[9], "Q": row[10], "B": "0"}}


def ticker(t: dict[str, Any], now: int) -> Payload:
    """``<s>@ticker`` from the REST 24hr ticker body (same numbers as ``/ticker/24hr``)."""
    return {"e": "24hrTicker", "E": now, "s": t["symbol"], "p": t["priceChange"],
            "P": t["priceChangePercent"], "w": t["weightedAvgPrice"], "c": t["lastPrice"],
            "Q": t["lastQty"], "o": t["openPrice"], "h": t["highPrice"], "l": t["lowPrice"],
            "v": t["volume"], "q": t["quoteVolume"], "O": t["openTime"], "C": t["closeTime"],
            "F": t["firstId"], "L": t["lastId"], "n": t["count"]}


def mini_ticker(t: dict[str, Any], now: int) -> Payload:
    return {"e": "24hrMiniTicker", "E": now, "s": t["symbol"], "c": t["lastPrice"],
            "o": t["openPrice"], "h": t["highPrice"], "l": t["lowPrice"], "v": t["volume"],
            "q": t["quoteVolume"]}


def book_ticker(symbol: str, update_id: int, bid: Decimal, ask: Decimal, qty: Decimal,
                now: int) -> Payload:
    return {"e": "bookTicker", "u": update_id, "E": now, "T": now, "s": symbol,
            "b": str(bid), "B": num(qty), "a": str(ask), "A": num(qty)}


def agg_trade(symbol: str, trade_id: int, price: Decimal, qty: Decimal, buyer_maker: bool,
              now: int) -> Payload:
    return {"e": "aggTrade", "E": now, "a": trade_id, "s": symbol, "p": str(price),
            "q": num(qty), "nq": num(qty), "f": trade_id, "l": trade_id, "T": now,
            "m": buyer_maker}


def trade(symbol: str, trade_id: int, price: Decimal, qty: Decimal, buyer_maker: bool,
          now: int) -> Payload:
    return {"e": "trade", "E": now, "T": now, "s": symbol, "t": trade_id, "p": str(price),
            "q": num(qty), "X": "MARKET", "m": buyer_maker}
