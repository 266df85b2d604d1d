"""Binance USD-M WebSocket payloads as documented (user-data and market stream pages),
with one-way mode positions (``ps`` = BOTH) as Phoenix 95 trades."""

from __future__ import annotations

from typing import Any

MARK = {"e": "markPriceUpdate", "E": 1562305380000, "s": "BTCUSDT", "p": "11794.15000000",
        "i": "11784.62659091", "P": "11784.25641265", "r": "0.00038167", "T": 1562306400000}
BOOK = {"e": "bookTicker", "u": 400900217, "E": 1568014460893, "T": 1568014460891,
        "s": "BTCUSDT", "b": "11794.10", "B": "31.21", "a": "11794.20", "A": "40.66"}
MINI = {"e": "24hrMiniTicker", "E": 1562305380500, "s": "BTCUSDT", "c": "11794.30",
        "o": "11700.0", "h": "11800.0", "l": "11600.0", "v": "10000", "q": "18"}


def kline(open_ms: int, close: str, closed: bool, interval: str = "1m",
          symbol: str = "BTCUSDT") -> dict[str, Any]:
    return {"e": "kline", "E": open_ms + 1000, "s": symbol,
            "k": {"t": open_ms, "T": open_ms + 59_999, "s": symbol, "i": interval, "f": 100,
                  "L": 200, "o": "100.0", "c": close, "h": "110.5", "l": "99.5", "v": "1000",
                  "n": 100, "x": closed, "q": "1.0000", "V": "500", "Q": "0.500",
                  "B": "123456"}}


def account_update(pa: str, *, wb: str = "1000.5", cw: str = "900.25", reason: str = "ORDER",
                   symbol: str = "BTCUSDT", E: int = 1564745798939) -> dict[str, Any]:
    return {"e": "ACCOUNT_UPDATE", "E": E, "T": E - 1,
            "a": {"m": reason,
                  "B": [{"a": "USDT", "wb": wb, "cw": cw, "bc": "0"}],
                  "P": [{"s": symbol, "pa": pa, "ep": "6563.665", "bep": "6563.6",
                         "cr": "200", "up": "2.85", "mt": "isolated", "iw": "65.7",
                         "ps": "BOTH"}]}}


def order_update(*, x: str = "TRADE", X: str = "FILLED", order_id: int = 8886774,
                 client: str = "phx-open-1", E: int = 1568879465651) -> dict[str, Any]:
    return {"e": "ORDER_TRADE_UPDATE", "E": E, "T": E - 1,
            "o": {"s": "BTCUSDT", "c": client, "S": "BUY", "o": "MARKET", "f": "GTC",
                  "q": "0.010", "p": "0", "ap": "6563.665", "sp": "0", "x": x, "X": X,
                  "i": order_id, "l": "0.010", "z": "0.010", "L": "6563.665", "N": "USDT",
                  "n": "0.02625466", "T": E - 1, "t": 77001, "b": "0", "a": "0", "m": False,
                  "R": False, "wt": "CONTRACT_PRICE", "ot": "MARKET", "ps": "BOTH",
                  "cp": False, "rp": "0", "pP": False, "si": 0, "ss": 0, "V": "NONE",
                  "pm": "NONE", "gtd": 0, "er": "0"}}


def algo_update(*, X: str = "NEW", algo_id: int = 2148719, kind: str = "STOP_MARKET",
                trigger: str = "6400", ai: str = "", rm: str = "",
                E: int = 1750515742303) -> dict[str, Any]:
    return {"e": "ALGO_UPDATE", "T": E - 6, "E": E,
            "o": {"caid": "phx-sl-1", "aid": algo_id, "at": "CONDITIONAL", "o": kind,
                  "s": "BTCUSDT", "S": "SELL", "ps": "BOTH", "f": "GTC", "q": "0.010", "X": X,
                  "ai": ai, "ap": "0.00000", "aq": "0.00000", "act": "0", "tp": trigger,
                  "p": "0", "V": "EXPIRE_MAKER", "wt": "MARK_PRICE", "pm": "NONE", "cp": True,
                  "pP": False, "R": True, "tt": 0, "gtd": 0, "rm": rm}}


LISTEN_KEY_EXPIRED = {"e": "listenKeyExpired", "E": "1736996475556",
                      "listenKey": "WsCMN0a4KHUPTQuX6IUnqEZfB1inxmv1qR4kbf1LuEjur5"}
