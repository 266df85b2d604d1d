"""Market state: mark/last/bid/ask per symbol and the candles brain's features need.

Raw events (teed from ccxt.pro) update the in-memory book; each batch is written once:
the prices hash, the candles that changed, and the records (a ``tick`` per mark-price
update, a ``kline`` per closed candle) appended to market:stream.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from shared.models import TickRecord
from shared.names import REC_KLINE, REC_TICK
from shared.records import Record
from shared.state import CandleRow, Price, StateWriter, dec, now_ms, timeframe_ms

from .metrics import FeedMetrics
from .parsing import Event, event_ms, kline_record, kline_row
from .sink import RecordSink

log = logging.getLogger("phoenix95.feed.market")

@dataclass
class CandleBook:
    """Closed candles (oldest first, at most ``limit``) and the forming one."""

    limit: int
    closed: list[CandleRow] = field(default_factory=list)
    live: CandleRow | None = None
    closed_dirty: bool = False
    live_dirty: bool = False

    @property
    def last_closed(self) -> float:
        return self.closed[-1][0] if self.closed else -1.0

    def _close(self, row: CandleRow) -> bool:
        if row[0] > self.last_closed:
            self.closed.append(row)
            del self.closed[:-self.limit]
            self.closed_dirty = True
            return True
        if row[0] == self.last_closed and self.closed[-1] != row:
            self.closed[-1] = row
            self.closed_dirty = True
        return False

    def update(self, row: CandleRow, is_closed: bool) -> list[CandleRow]:
        """One kline event; returns the candles it closed (to append as records)."""
        newly: list[CandleRow] = []
        # a kline of a later candle closes the forming one even if its x=true was missed
        if self.live is not None and row[0] > self.live[0] and self._close(self.live):
            newly.append(self.live)
        if is_closed and self._close(row):
            newly.append(row)
        if self.live is None or row[0] >= self.live[0]:
            self.live, self.live_dirty = row, True
        return newly

    def seed(self, rows: Sequence[CandleRow], now: int, tf_ms: int) -> list[CandleRow]:
        """A REST ``fetch_ohlcv`` answer; returns the closed candles the stream missed."""
        closed = [list(map(float, r)) for r in rows if r[0] + tf_ms <= now]
        forming = [list(map(float, r)) for r in rows if r[0] + tf_ms > now]
        missed = [r for r in closed if self.closed and r[0] > self.last_closed]
        newer = [r for r in self.closed if not closed or r[0] > closed[-1][0]]
        self.closed = (closed + newer)[-self.limit:]
        self.closed_dirty = True
        if forming and (self.live is None or forming[-1][0] >= self.live[0]):
            self.live, self.live_dirty = forming[-1], True
        return missed


@dataclass
class Quote:
    mark: Decimal | None = None
    last: Decimal | None = None
    bid: Decimal | None = None
    ask: Decimal | None = None
    event_ms: int = 0


class MarketBook:
    """The feed's market side (one per Feed; not thread-safe: the loop's only)."""

    def __init__(self, symbols: Sequence[str], timeframes: Sequence[str], candle_limit: int,
                 writer: StateWriter, sink: RecordSink, metrics: FeedMetrics,
                 stream: str) -> None:
        self.symbols = set(symbols)
        self.timeframes = tuple(timeframes)
        self.writer = writer
        self.sink = sink
        self.metrics = metrics
        self.stream = stream
        self.quotes: dict[str, Quote] = {s: Quote() for s in symbols}
        self.candles = {(s, tf): CandleBook(candle_limit) for s in symbols for tf in timeframes}
        self.last_mark_ms = 0  # local time of the last mark price (market freshness)
        self._dirty: set[str] = set()
        self._latency: list[int] = []

    # --- events ---
    def handle(self, ev: Event) -> None:
        kind = ev.get("e")
        symbol = str(ev.get("s") or "")
        if kind == "kline":
            k = ev.get("k") or {}
            self._kline(str(k.get("s") or symbol), str(k.get("i") or ""), k)
            return
        quote = self.quotes.get(symbol)
        if quote is None:
            return
        if kind == "markPriceUpdate":
            quote.mark = dec(ev["p"])
            self.last_mark_ms = now_ms()
            self._tick(symbol, quote, event_ms(ev))
        elif kind == "bookTicker":
            quote.bid, quote.ask = dec(ev["b"]), dec(ev["a"])
        elif kind in ("24hrMiniTicker", "24hrTicker", "aggTrade", "trade"):
            quote.last = dec(ev["c"] if "c" in ev else ev["p"])
        else:
            return
        quote.event_ms = max(quote.event_ms, event_ms(ev))
        self._dirty.add(symbol)
        self.metrics.events.labels(str(kind)).inc()
        self._latency.append(event_ms(ev))

    def _tick(self, symbol: str, q: Quote, at: int) -> None:
        mark = q.mark or Decimal(0)
        tick = TickRecord(symbol=symbol, price=str(q.last or mark), mark_price=str(mark),
                          bid=str(q.bid) if q.bid is not None else None,
                          ask=str(q.ask) if q.ask is not None else None, event_ms=at)
        self.sink.add(self.stream, Record(REC_TICK, dict(tick)))

    def _kline(self, symbol: str, interval: str, k: Mapping[str, Any]) -> None:
        book = self.candles.get((symbol, interval))
        if book is None:
            return
        for row in book.update(kline_row(k), bool(k.get("x"))):
            self.sink.add(self.stream, Record(REC_KLINE, dict(kline_record(symbol, interval, row))))
        self.metrics.events.labels("kline").inc()

    def seed(self, symbol: str, timeframe: str, rows: Sequence[CandleRow]) -> None:
        book = self.candles[(symbol, timeframe)]
        for row in book.seed(rows, now_ms(), timeframe_ms(timeframe)):
            self.sink.add(self.stream,
                          Record(REC_KLINE, dict(kline_record(symbol, timeframe, row))))

    # --- writes ---
    def flush(self) -> None:
        """Write what changed since the last flush: one round trip per kind of state."""
        stored = now_ms()
        if self._dirty:
            self.writer.prices(Price(symbol=s, mark=q.mark, last=q.last, bid=q.bid, ask=q.ask,
                                     event_ms=q.event_ms, updated_ms=stored)
                               for s in sorted(self._dirty) if (q := self.quotes[s]))
            self._dirty.clear()
        for (symbol, tf), book in self.candles.items():
            if book.closed_dirty or book.live_dirty:
                self.writer.candles(symbol, tf, book.closed if book.closed_dirty else None,
                                    book.live if book.live_dirty else None)
                book.closed_dirty = book.live_dirty = False
        self.sink.flush()
        for at in self._latency:
            if at:
                self.metrics.latency.labels("market").observe(max(0, stored - at) / 1000)
        self._latency.clear()

    def fresh(self, max_age_ms: int, now: int | None = None) -> bool:
        return bool(self.last_mark_ms) and (now or now_ms()) - self.last_mark_ms <= max_age_ms

    def down(self) -> None:
        """A market connection dropped: freshness needs a new mark price."""
        self.last_mark_ms = 0
