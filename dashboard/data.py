"""Read-only data access for the dashboard: Redis stream reads, record joins, RPC, health.

Everything here is plain Python (no Streamlit) so it can be unit-tested on records built
by hand. Reads are bounded (``XREVRANGE ... COUNT n``); nothing here writes anywhere.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import redis

from shared import names
from shared.lag import Lag
from shared.records import Record
from shared.redis_conn import redis_client
from shared.settings import RedisStreamsSettings, ServicesSettings

CANDLE_COLUMNS = ["time", "open", "high", "low", "close", "volume"]
SIGNAL_COLUMNS = [
    "time", "signal_id", "symbol", "action", "side", "price", "phoenix_score",
    "final_confidence", "decision", "reasons", "risk", "status", "orders",
]
TRADE_EVENT_COLUMNS = ["time", "type", "symbol", "signal_id", "detail"]
POSITION_COLUMNS = [
    "symbol", "side", "quantity", "entry_price", "mark_price", "unrealized_pnl", "leverage",
    "margin", "liquidation_price", "stop_loss", "take_profit",
]


# --------------------------------------------------------------------------- streams


@dataclass(frozen=True)
class StreamEntry:
    """One decoded stream entry: its Redis id and the record it carries."""

    id: str
    record: Record

    @property
    def time(self) -> pd.Timestamp:
        ms = self.record.ts or _id_ms(self.id)
        return pd.Timestamp(ms, unit="ms", tz="UTC")


def _id_ms(entry_id: str) -> int:
    try:
        return int(entry_id.split("-", 1)[0])
    except ValueError:
        return 0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class StreamReader:
    """Bounded, read-only view of the telemetry streams (oldest first in every result)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    @classmethod
    def from_settings(cls, settings: RedisStreamsSettings, timeout: float = 2.0) -> StreamReader:
        client = redis_client(settings, socket_timeout=timeout, socket_connect_timeout=timeout)
        return cls(client)

    def read(self, stream: str, count: int) -> list[StreamEntry]:
        """The newest ``count`` entries of ``stream``, oldest first; undecodable ones skipped."""
        raw = self._client.xrevrange(stream, count=count)
        return self._decode(reversed(raw))  # type: ignore[arg-type]

    @staticmethod
    def _decode(raw: Iterable[tuple[Any, Any]]) -> list[StreamEntry]:
        entries: list[StreamEntry] = []
        for entry_id, fields in raw:
            try:
                record = Record.from_stream_fields(fields)
            except (ValueError, TypeError):
                continue
            entries.append(StreamEntry(_text(entry_id), record))
        return entries

    def read_after(self, stream: str, last_id: str, count: int) -> list[StreamEntry]:
        """Up to ``count`` entries newer than ``last_id``, oldest first.

        If more than ``count`` arrived, the newest ``count`` are returned (a gap beats lag).
        """
        raw = self._client.xrevrange(stream, min="(" + last_id, count=count)
        return self._decode(reversed(raw))  # type: ignore[arg-type]

    def market(self, count: int = 2000) -> list[StreamEntry]:
        return self.read(names.MARKET_STREAM, count)

    def signals(self, count: int = 500) -> list[StreamEntry]:
        return self.read(names.SIGNAL_STREAM, count)

    def risk(self, count: int = 500) -> list[StreamEntry]:
        return self.read(names.RISK_STREAM, count)

    def trades(self, count: int = 500) -> list[StreamEntry]:
        return self.read(names.TRADE_STREAM, count)


# --------------------------------------------------------------------------- market data


def _num(value: Any) -> float | None:
    try:
        if value is None or value == "":
            return None
        return float(value)
    except (TypeError, ValueError):
        return None


def market_symbols(entries: Iterable[StreamEntry]) -> list[str]:
    """Symbols seen on the market stream, sorted."""
    found = {
        str(e.record.data.get("symbol", "")).upper()
        for e in entries
        if e.record.type in ("tick", "kline") and e.record.data.get("symbol")
    }
    return sorted(found)


def latest_prices(entries: Iterable[StreamEntry]) -> dict[str, float]:
    """Last known price per symbol (tick price, else kline close)."""
    prices: dict[str, float] = {}
    for e in entries:
        data = e.record.data
        symbol = str(data.get("symbol", "")).upper()
        if not symbol:
            continue
        price = _num(data.get("price")) if e.record.type == "tick" else None
        if price is None and e.record.type == "kline":
            price = _num(data.get("close"))
        if price is not None:
            prices[symbol] = price
    return prices


class CandleBook:
    """OHLCV candles per symbol, accumulated from market records (thread-safe).

    Kline records are authoritative for their ``open_time`` (the latest update of a candle
    wins). Buckets not covered by any kline are built from tick prices, so the chart has
    data even when only ticks flow. Keeps at most ``max_candles`` per symbol, so a page left
    open shows more history than the stream's MAXLEN window holds.
    """

    def __init__(self, interval_ms: int = 60_000, max_candles: int = 720) -> None:
        self.interval_ms = interval_ms
        self.max_candles = max_candles
        self._klines: dict[str, dict[int, dict[str, float]]] = {}
        self._ticks: dict[str, dict[int, dict[str, float]]] = {}
        self._prices: dict[str, float] = {}
        self._lock = threading.Lock()
        self.last_id: str | None = None

    def ingest(self, entries: Iterable[StreamEntry]) -> None:
        with self._lock:
            for e in entries:
                self._ingest_one(e)
                self.last_id = e.id
            for book in (self._klines, self._ticks):
                for candles in book.values():
                    if len(candles) > self.max_candles:
                        for t in sorted(candles)[: len(candles) - self.max_candles]:
                            del candles[t]

    def _ingest_one(self, e: StreamEntry) -> None:
        data = e.record.data
        symbol = str(data.get("symbol", "")).upper()
        if not symbol:
            return
        if e.record.type == "kline":
            if str(data.get("interval") or "1m") != "1m":
                return  # the feed records 5m and 1h closes too; the chart is of 1m candles
            open_time = _num(data.get("open_time"))
            o, h, low, c = (_num(data.get(k)) for k in ("open", "high", "low", "close"))
            if open_time is None or o is None or h is None or low is None or c is None:
                return
            self._klines.setdefault(symbol, {})[int(open_time)] = {
                "open": o, "high": h, "low": low, "close": c,
                "volume": _num(data.get("volume")) or 0.0,
            }
            self._prices.setdefault(symbol, c)
        elif e.record.type == "tick":
            price = _num(data.get("price"))
            ts = e.record.ts or _id_ms(e.id)
            if price is None or not ts:
                return
            self._prices[symbol] = price
            bucket = ts - ts % self.interval_ms
            candles = self._ticks.setdefault(symbol, {})
            candle = candles.get(bucket)
            if candle is None:
                candles[bucket] = {"open": price, "high": price, "low": price, "close": price,
                                   "volume": 0.0}
            else:
                candle["high"] = max(candle["high"], price)
                candle["low"] = min(candle["low"], price)
                candle["close"] = price

    def symbols(self) -> list[str]:
        with self._lock:
            return sorted(set(self._klines) | set(self._ticks))

    def prices(self) -> dict[str, float]:
        with self._lock:
            return dict(self._prices)

    def candles(self, symbol: str) -> pd.DataFrame:
        symbol = symbol.upper()
        with self._lock:
            merged = {**self._ticks.get(symbol, {}), **self._klines.get(symbol, {})}
            rows = [
                {"time": pd.Timestamp(t, unit="ms", tz="UTC"), **merged[t]}
                for t in sorted(merged)[-self.max_candles:]
            ]
        return pd.DataFrame(rows, columns=CANDLE_COLUMNS)

    def update(self, reader: StreamReader, first_count: int = 10_000,
               step_count: int = 5_000) -> None:
        """Read what is new on market:stream since the last call (bounded reads)."""
        if self.last_id is None:
            self.ingest(reader.market(first_count))
        else:
            self.ingest(reader.read_after(names.MARKET_STREAM, self.last_id, step_count))


def build_candles(
    entries: Iterable[StreamEntry], symbol: str, interval_ms: int = 60_000
) -> pd.DataFrame:
    """OHLCV candles of one symbol from market records, oldest first (see CandleBook)."""
    book = CandleBook(interval_ms=interval_ms)
    book.ingest(entries)
    return book.candles(symbol)


# --------------------------------------------------------------------------- signals


def _reasons(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    if isinstance(value, Iterable):
        return ", ".join(str(v) for v in value)
    return str(value)


def _new_signal_row(entry: StreamEntry) -> dict[str, Any]:
    row: dict[str, Any] = {c: None for c in SIGNAL_COLUMNS}
    row.update(time=entry.time, signal_id=entry.record.signal_id, reasons="", risk="",
               status="", orders="")
    return row


def _apply_signal(row: dict[str, Any], kind: str, data: dict[str, Any]) -> None:
    if not row["symbol"] and data.get("symbol"):
        row["symbol"] = str(data["symbol"]).upper()
    if not row["side"] and data.get("side"):
        row["side"] = str(data["side"])
    if kind == "signal_accepted":
        row["action"] = data.get("action")
        row["price"] = _num(data.get("price"))
        row["status"] = row["status"] or "accepted"
    elif kind == "signal_scored":
        row["phoenix_score"] = _num(data.get("phoenix_score"))
        row["final_confidence"] = _num(data.get("final_confidence"))
        row["decision"] = data.get("decision")
        row["reasons"] = _reasons(data.get("reasons"))
        if row["status"] in ("", "accepted"):
            row["status"] = "scored: " + str(data.get("decision") or "?")
    elif kind == "signal_rejected":
        row["decision"] = "rejected"
        detail = data.get("detail")
        reason = str(data.get("reason") or "")
        row["reasons"] = f"{reason}: {detail}" if detail else reason
        row["status"] = "rejected"


def _apply_risk(row: dict[str, Any], data: dict[str, Any]) -> None:
    approved = bool(data.get("approved"))
    reasons = _reasons(data.get("reasons"))
    row["risk"] = "approved" if approved else (f"rejected: {reasons}" if reasons else "rejected")
    if not row["status"].startswith(("filled", "failed", "closed")):
        row["status"] = "risk approved" if approved else "risk rejected"


def _add_orders(row: dict[str, Any], ids: Iterable[Any]) -> None:
    known = [o for o in str(row["orders"]).split(", ") if o]
    for order in ids:
        if order and str(order) not in known:
            known.append(str(order))
    row["orders"] = ", ".join(known)


def _apply_trade(row: dict[str, Any], kind: str, data: dict[str, Any]) -> None:
    _add_orders(row, (data.get(k) for k in ("client_order_id", "order_id", "sl_client_id",
                                            "tp_client_id")))
    if kind == "entry_filled":
        price = _num(data.get("entry_price"))
        row["status"] = f"filled @ {price:g}" if price is not None else "filled"
    elif kind == "trade_failed":
        row["status"] = "failed: " + str(data.get("reason") or "?")
    elif kind == "position_closed":
        pnl = _num(data.get("realized_pnl"))
        row["status"] = f"closed ({pnl:+.2f})" if pnl is not None else "closed"


SIGNAL_TYPES = ("signal_accepted", "signal_scored", "signal_rejected")


def join_signals(
    signal_entries: Iterable[StreamEntry],
    risk_entries: Iterable[StreamEntry] = (),
    trade_entries: Iterable[StreamEntry] = (),
) -> pd.DataFrame:
    """One row per signal, newest first, joining its records by ``signal_id``.

    ``signal_accepted`` gives symbol/action/side/price, ``signal_scored`` the Phoenix score,
    final confidence, decision and reasons, ``risk_check`` the risk verdict and
    ``entry_filled`` / ``trade_failed`` / ``position_closed`` the outcome. ``status`` is the
    furthest stage the signal reached; ``time`` its earliest record. Records without a
    ``signal_id`` (e.g. a rejected malformed webhook) get a row of their own.
    """
    rows: dict[str, dict[str, Any]] = {}
    for e in signal_entries:
        if e.record.type not in SIGNAL_TYPES:
            continue
        key = e.record.signal_id or f"entry:{e.id}"
        row = rows.setdefault(key, _new_signal_row(e))
        row["time"] = min(row["time"], e.time)
        _apply_signal(row, e.record.type, e.record.data)

    by_id = {k: v for k, v in rows.items() if v["signal_id"]}
    for e in risk_entries:
        if e.record.type == "risk_check" and e.record.signal_id in by_id:
            _apply_risk(by_id[e.record.signal_id], e.record.data)
    for e in trade_entries:
        if e.record.signal_id in by_id:
            _apply_trade(by_id[e.record.signal_id], e.record.type, e.record.data)

    frame = pd.DataFrame(list(rows.values()), columns=SIGNAL_COLUMNS)
    if frame.empty:
        return frame
    return frame.sort_values("time", ascending=False, kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- trades


@dataclass(frozen=True)
class Position:
    symbol: str
    side: str
    quantity: float
    entry_price: float
    mark_price: float | None = None
    unrealized_pnl: float | None = None
    leverage: float | None = None
    margin: float | None = None
    liquidation_price: float | None = None
    stop_loss: float | None = None
    take_profit: float | None = None

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> Position:
        return cls(
            symbol=str(data.get("symbol", "")).upper(),
            side=str(data.get("side", "")),
            quantity=_num(data.get("quantity")) or 0.0,
            entry_price=_num(data.get("entry_price")) or 0.0,
            mark_price=_num(data.get("mark_price")),
            unrealized_pnl=_num(data.get("unrealized_pnl")),
            leverage=_num(data.get("leverage")),
            margin=_num(data.get("margin")),
            liquidation_price=_num(data.get("liquidation_price")),
            stop_loss=_num(data.get("stop_loss")),
            take_profit=_num(data.get("take_profit")),
        )


@dataclass(frozen=True)
class Fill:
    time: pd.Timestamp
    symbol: str
    side: str
    price: float
    quantity: float
    kind: str  # "entry" | "close"


def _is_long(side: str) -> bool:
    return side.lower() in ("long", "buy")


def positions_from_trades(
    trade_entries: Iterable[StreamEntry], marks: dict[str, float] | None = None
) -> list[Position]:
    """Open positions reconstructed from trade:stream (fallback when RPC is down).

    ``entry_filled`` opens, ``brackets_placed`` adds SL/TP/liquidation, ``position_closed``
    closes (by signal id, else every position of the symbol). Only as complete as the
    bounded window of records read.
    """
    marks = marks or {}
    open_: dict[str, dict[str, Any]] = {}
    for e in trade_entries:
        data, kind = e.record.data, e.record.type
        symbol = str(data.get("symbol", "")).upper()
        key = e.record.signal_id or symbol
        if kind == "entry_filled":
            open_[key] = {
                "symbol": symbol, "side": data.get("side", ""),
                "quantity": data.get("quantity"), "entry_price": data.get("entry_price"),
                "leverage": data.get("leverage"), "margin": data.get("margin"),
            }
        elif kind == "brackets_placed":
            target = open_.get(key) or next(
                (p for p in reversed(list(open_.values())) if p["symbol"] == symbol), None
            )
            if target is not None:
                for k in ("stop_loss", "take_profit", "liquidation_price"):
                    if data.get(k) is not None:
                        target[k] = data[k]
        elif kind == "position_closed":
            if key in open_ and open_[key]["symbol"] == symbol:
                del open_[key]
            else:
                for k in [k for k, p in open_.items() if p["symbol"] == symbol]:
                    del open_[k]
    positions = []
    for data in open_.values():
        pos = Position.from_mapping(data)
        mark = marks.get(pos.symbol)
        if mark is not None:
            sign = 1.0 if _is_long(pos.side) else -1.0
            pnl = sign * (mark - pos.entry_price) * pos.quantity
            pos = Position(**{**pos.__dict__, "mark_price": mark, "unrealized_pnl": pnl})
        positions.append(pos)
    return positions


def positions_frame(positions: Sequence[Position]) -> pd.DataFrame:
    return pd.DataFrame([p.__dict__ for p in positions], columns=POSITION_COLUMNS)


def fills_from_trades(trade_entries: Iterable[StreamEntry], symbol: str) -> list[Fill]:
    """Entry fills (and closes, at the last known entry's symbol) of one symbol."""
    symbol = symbol.upper()
    fills: list[Fill] = []
    for e in trade_entries:
        data = e.record.data
        if str(data.get("symbol", "")).upper() != symbol:
            continue
        if e.record.type == "entry_filled":
            price = _num(data.get("entry_price"))
            if price is not None:
                fills.append(Fill(e.time, symbol, str(data.get("side", "")), price,
                                  _num(data.get("quantity")) or 0.0, "entry"))
        elif e.record.type == "position_closed":
            price = _num(data.get("exit_price")) or _num(data.get("price"))
            if price is not None:
                fills.append(Fill(e.time, symbol, str(data.get("side", "")), price,
                                  _num(data.get("quantity")) or 0.0, "close"))
    return fills


def _trade_detail(kind: str, data: dict[str, Any]) -> str:
    if kind == "entry_filled":
        return (f"{data.get('side', '')} {data.get('quantity', '')} @ {data.get('entry_price', '')}"
                f" x{data.get('leverage', '')} margin {data.get('margin', '')}")
    if kind == "brackets_placed":
        return (f"SL {data.get('stop_loss', '')} / TP {data.get('take_profit', '')}"
                f" / liq {data.get('liquidation_price', '')}")
    if kind == "trade_failed":
        return str(data.get("reason", ""))
    if kind == "position_closed":
        return f"{data.get('reason', '')} pnl {data.get('realized_pnl', '')}"
    shown = {k: v for k, v in data.items() if k != "symbol"}
    return json.dumps(shown, default=str)[:200]


def trade_events_frame(trade_entries: Iterable[StreamEntry]) -> pd.DataFrame:
    """Trade events, newest first."""
    rows = [
        {
            "time": e.time,
            "type": e.record.type,
            "symbol": str(e.record.data.get("symbol", "")).upper(),
            "signal_id": e.record.signal_id,
            "detail": _trade_detail(e.record.type, e.record.data),
        }
        for e in trade_entries
    ]
    frame = pd.DataFrame(rows, columns=TRADE_EVENT_COLUMNS)
    if frame.empty:
        return frame
    return frame.iloc[::-1].reset_index(drop=True)


# --------------------------------------------------------------------------- health


@dataclass(frozen=True)
class ServiceHealth:
    service: str
    url: str
    ok: bool
    status: str
    latency_ms: float | None = None


def check_one(service: str, url: str, timeout: float = 1.0) -> ServiceHealth:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read(2048)
            latency = (time.perf_counter() - started) * 1000
            status = str(resp.status)
            try:
                parsed = json.loads(body)
                if isinstance(parsed, dict) and "ready" in parsed:
                    status = "ready" if parsed["ready"] else "not ready"
                elif isinstance(parsed, dict) and "status" in parsed:
                    status = str(parsed["status"])
            except ValueError:
                pass
            return ServiceHealth(service, url, 200 <= resp.status < 300, status, latency)
    except urllib.error.HTTPError as exc:
        latency = (time.perf_counter() - started) * 1000
        return ServiceHealth(service, url, False, _not_ready(exc) or f"HTTP {exc.code}", latency)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return ServiceHealth(service, url, False, f"down ({reason})")


def check_health(urls: dict[str, str], timeout: float = 1.0) -> list[ServiceHealth]:
    """GET every ``/health`` URL in parallel; the whole check takes about ``timeout``."""
    if not urls:
        return []
    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        futures = [pool.submit(check_one, s, u, timeout) for s, u in urls.items()]
        return [f.result() for f in futures]


def _not_ready(exc: urllib.error.HTTPError) -> str:
    """A 503 from ``/ready`` names its failing checks."""
    try:
        parsed = json.loads(exc.read(4096))
    except (OSError, ValueError):
        return ""
    if isinstance(parsed, dict) and isinstance(parsed.get("failing"), list):
        return "not ready: " + ", ".join(map(str, parsed["failing"]))
    return ""


def health_urls(host: str, ports: dict[str, int]) -> dict[str, str]:
    return {service: f"http://{host}:{port}/health" for service, port in ports.items()}


def ready_urls(services: ServicesSettings, names_: Iterable[str]) -> dict[str, str]:
    """Each service's ``/ready`` at its advertised address (``services.hosts``)."""
    return {name: f"{services.url_of(name)}/ready" for name in names_}


# --------------------------------------------------------------------------- RPC


@dataclass(frozen=True)
class RpcSnapshot:
    """What the last RPC poll returned; errors are strings meant for the page."""

    positions: list[Position] | None = None
    positions_error: str | None = None
    risk_status: dict[str, Any] | None = None
    risk_error: str | None = None
    fetched_at: float = 0.0
    trades: list[dict[str, Any]] | None = None
    trades_error: str | None = None

    @property
    def age_s(self) -> float:
        return time.time() - self.fetched_at if self.fetched_at else float("inf")


def _describe_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def fetch_rpc_snapshot(amqp_uri: str, timeout: float) -> RpcSnapshot:
    """Call ``execute.positions()`` and ``risk.status()`` through one standalone proxy.

    Blocking; run it in a plain thread. Never raises: errors land in the snapshot.
    """
    from nameko.standalone.rpc import ClusterRpcProxy  # heavy import, only where used

    positions: list[Position] | None = None
    risk_status: dict[str, Any] | None = None
    pos_err: str | None = None
    risk_err: str | None = None
    trades: list[dict[str, Any]] | None = None
    trades_err: str | None = None
    try:
        with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=timeout) as rpc:
            try:
                raw = rpc.execute.positions()
                positions = [Position.from_mapping(p) for p in raw or []]
            except Exception as exc:  # noqa: BLE001 - shown on the page
                pos_err = _describe_error(exc)
            try:
                status = rpc.risk.status()
                risk_status = dict(status) if isinstance(status, dict) else {"status": status}
            except Exception as exc:  # noqa: BLE001 - shown on the page
                risk_err = _describe_error(exc)
            try:
                trades = [dict(t) for t in rpc.execute.trades(200) or []]
            except Exception as exc:  # noqa: BLE001 - shown on the page
                trades_err = _describe_error(exc)
    except Exception as exc:  # noqa: BLE001 - broker unreachable etc.
        message = "RPC unreachable: " + _describe_error(exc)
        pos_err = pos_err or message
        risk_err = risk_err or message
        trades_err = trades_err or message
    return RpcSnapshot(positions, pos_err, risk_status, risk_err, time.time(), trades,
                       trades_err)


class RpcPoller:
    """Polls the RPC snapshot in one daemon thread so page renders never block on AMQP.

    A hung or slow broker therefore costs at most one thread, not one per refresh.
    """

    def __init__(
        self,
        amqp_uri: str,
        timeout: float = 2.0,
        interval: float = 3.0,
        fetch: Callable[[str, float], RpcSnapshot] = fetch_rpc_snapshot,
    ) -> None:
        self._amqp_uri = amqp_uri
        self._timeout = timeout
        self._interval = interval
        self._fetch = fetch
        self._lock = threading.Lock()
        self._snapshot: RpcSnapshot | None = None
        self._first = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-rpc", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            snapshot = self._fetch(self._amqp_uri, self._timeout)
            with self._lock:
                self._snapshot = snapshot
            self._first.set()
            self._stop.wait(self._interval)

    def latest(self, wait: float = 0.0) -> RpcSnapshot | None:
        """The newest snapshot; waits up to ``wait`` seconds for the first one."""
        if wait > 0:
            self._first.wait(wait)
        with self._lock:
            return self._snapshot

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Dashboard:
    """Everything one refresh of the page shows, read in one go."""

    signals: list[StreamEntry] = field(default_factory=list)
    risk: list[StreamEntry] = field(default_factory=list)
    trades: list[StreamEntry] = field(default_factory=list)
    error: str | None = None


def read_dashboard(reader: StreamReader, event_count: int = 500) -> Dashboard:
    """Read the event streams; a Redis failure becomes ``error`` instead of an exception."""
    try:
        return Dashboard(
            signals=reader.signals(event_count),
            risk=reader.risk(event_count),
            trades=reader.trades(event_count),
        )
    except redis.RedisError as exc:
        return Dashboard(error=f"Redis unavailable: {_describe_error(exc)}")


# --------------------------------------------------------------------------- lag


class LagPoller:
    """Consumer lag of every queue, stream group and topic, probed in one daemon thread."""

    def __init__(self, probe: Callable[[], list[Lag]], interval: float = 10.0) -> None:
        self._probe = probe
        self._interval = interval
        self._lock = threading.Lock()
        self._rows: list[Lag] = []
        self._at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-lag", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rows = self._probe()
            except Exception as exc:  # noqa: BLE001 - a probe bug must not kill the thread
                rows = [Lag("probe", "all", "-", None, error=_describe_error(exc))]
            with self._lock:
                self._rows, self._at = rows, time.time()
            self._stop.wait(self._interval)

    def latest(self) -> tuple[list[Lag], float]:
        with self._lock:
            return list(self._rows), self._at

    def stop(self) -> None:
        self._stop.set()


def lag_frame(rows: Sequence[Lag]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"broker": r.broker, "source": r.source, "group": r.group, "lag": r.messages,
          "pending": r.pending, "consumers": r.consumers, "error": r.error or ""}
         for r in rows],
        columns=["broker", "source", "group", "lag", "pending", "consumers", "error"])


def broker_rows(rows: Sequence[Lag]) -> list[ServiceHealth]:
    """Broker health from the lag probes: up if any probe of that broker answered."""
    status: dict[str, ServiceHealth] = {}
    for r in rows:
        if r.error is None:
            status[r.broker] = ServiceHealth(r.broker, "", True, "ok")
        elif r.broker not in status:
            status[r.broker] = ServiceHealth(r.broker, "", False, r.error)
    return [status[b] for b in sorted(status)]


# --------------------------------------------------------------------------- trades, PnL

CLOSED_COLUMNS = ["closed_at", "symbol", "side", "quantity", "entry_price", "exit_price",
                  "realized_pnl", "close_reason", "signal_id"]


def closed_trades_frame(trades: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Closed trades (``execute.trades()``), newest first, numbers as floats."""
    rows = []
    for t in trades:
        if not t.get("closed_at") and t.get("realized_pnl") in (None, ""):
            continue
        rows.append({
            "closed_at": pd.to_datetime(t.get("closed_at"), utc=True, errors="coerce"),
            "symbol": t.get("symbol"), "side": t.get("side"),
            "quantity": _num(t.get("quantity")), "entry_price": _num(t.get("entry_price")),
            "exit_price": _num(t.get("exit_price")), "realized_pnl": _num(t.get("realized_pnl")),
            "close_reason": t.get("close_reason"), "signal_id": t.get("signal_id"),
        })
    frame = pd.DataFrame(rows, columns=CLOSED_COLUMNS)
    if frame.empty:
        return frame
    return frame.sort_values("closed_at", ascending=False, kind="stable").reset_index(drop=True)


def equity_curve(closed: pd.DataFrame, equity_now: float | None,
                 unrealized_now: float = 0.0) -> pd.DataFrame:
    """Realised equity after each closed trade and its drawdown from the running peak.

    Anchored at the current realised equity (``equity_now - unrealized_now``) and walked
    back through the realised PnL, so the curve ends where the account is now.
    """
    columns = ["time", "equity", "drawdown", "drawdown_pct"]
    if closed.empty or equity_now is None:
        return pd.DataFrame(columns=columns)
    ordered = closed.dropna(subset=["closed_at"]).sort_values("closed_at", kind="stable")
    pnl = ordered["realized_pnl"].fillna(0.0)
    end = equity_now - unrealized_now
    start = end - float(pnl.sum())
    equity = start + pnl.cumsum()
    times = list(ordered["closed_at"])
    first_time = times[0] - pd.Timedelta(seconds=1) if times else pd.Timestamp.now(tz="UTC")
    frame = pd.DataFrame({"time": [first_time, *times],
                          "equity": [start, *equity.tolist()]})
    peak = frame["equity"].cummax()
    frame["drawdown"] = frame["equity"] - peak
    frame["drawdown_pct"] = (frame["drawdown"] / peak.where(peak != 0)).fillna(0.0) * 100
    return frame


def pipeline_latencies(signal_entries: Iterable[StreamEntry],
                       trade_entries: Iterable[StreamEntry]) -> list[float]:
    """Seconds from a signal's first record to its ``entry_filled``, per filled signal."""
    first: dict[str, pd.Timestamp] = {}
    for e in signal_entries:
        sid = e.record.signal_id
        if sid and (sid not in first or e.time < first[sid]):
            first[sid] = e.time
    out = []
    for e in trade_entries:
        sid = e.record.signal_id
        if e.record.type == "entry_filled" and sid in first:
            seconds = (e.time - first[sid]).total_seconds()
            if seconds >= 0:
                out.append(seconds)
    return out


def liquidation_distance_pct(position: Position) -> float | None:
    ref = position.mark_price or position.entry_price
    if not ref or not position.liquidation_price:
        return None
    return abs(ref - position.liquidation_price) / ref * 100


# --------------------------------------------------------------------------- controls


def send_control(url: str, api_key: str, body: dict[str, Any],
                 timeout: float = 10.0) -> tuple[bool, str]:
    """POST a state-changing request with ``X-API-Key``; (ok, message) for the page."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "X-API-Key": api_key})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return True, resp.read(4000).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}: {exc.read(1000).decode(errors='replace')}"
    except (OSError, ValueError) as exc:
        return False, f"unreachable: {getattr(exc, 'reason', exc)}"
