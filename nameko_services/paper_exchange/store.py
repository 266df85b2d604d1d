"""The paper exchange's own SQLite file: write-through persistence of the account book.

One small transaction per order event (the engine flushes only what changed, inside its
lock). WAL journal with ``synchronous=NORMAL``: a committed event survives the process
being killed; after a power cut the last few events may be lost (Binance itself is not
the oracle for that case). One process per file: two exchanges on one file would
overwrite each other's rows.

Rows are JSON documents of the engine's dataclasses (decimals as strings), keyed by id,
so the schema does not have to follow every field the response shapes grow.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from .models import AlgoOrder, Order, Position, Trade

SCHEMA_VERSION = "1"
_TABLES = {  # table -> key column
    "positions": "symbol",
    "orders": "order_id",
    "algo_orders": "algo_id",
    "trades": "trade_id",
}
_DDL = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS symbols (symbol TEXT PRIMARY KEY, leverage INTEGER NOT NULL,"
    " margin_type TEXT NOT NULL)",
    *(f"CREATE TABLE IF NOT EXISTS {table} ({key} {'TEXT' if key == 'symbol' else 'INTEGER'}"
      f" PRIMARY KEY, data TEXT NOT NULL)" for table, key in _TABLES.items()),
]
T = TypeVar("T")


def encode(record: Any) -> str:
    return json.dumps({k: str(v) if isinstance(v, Decimal) else v
                       for k, v in dataclasses.asdict(record).items()})


def decode(cls: type[T], data: str) -> T:
    raw = json.loads(data)
    decimals = {f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                if "Decimal" in str(f.type)}
    return cls(**{k: Decimal(v) if k in decimals and v is not None else v
                  for k, v in raw.items()})


@dataclass
class Snapshot:
    """Everything the engine needs to carry on where it stopped."""

    wallet: Decimal
    next_id: int
    update_time: int
    leverage: dict[str, int]
    margin_type: dict[str, str]
    positions: dict[str, Position]
    orders: dict[int, Order]
    algos: dict[int, AlgoOrder]
    trades: list[Trade]


@dataclass
class Changes:
    """Rows to upsert in one transaction; ``meta`` is always written."""

    wallet: Decimal
    next_id: int
    update_time: int
    symbols: list[tuple[str, int, str]] = field(default_factory=list)
    positions: list[Position] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)
    algos: list[AlgoOrder] = field(default_factory=list)
    trades: list[Trade] = field(default_factory=list)


class PaperStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()  # the engine lock already serialises; belt and braces
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one per event.
        self._db = sqlite3.connect(str(path), timeout=5.0, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        for statement in _DDL:
            self._db.execute(statement)
        self.writes = 0

    def load(self) -> Snapshot | None:
        """The saved book, or None when the file holds none (new file or after clear)."""
        with self._lock:
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            if "wallet" not in meta:
                return None
            if meta.get("schema") != SCHEMA_VERSION:
                raise RuntimeError(f"{self.path}: paper exchange state schema "
                                   f"{meta.get('schema')!r}, expected {SCHEMA_VERSION}")
            symbols = self._db.execute("SELECT symbol, leverage, margin_type FROM symbols")
            rows = {table: [r[0] for r in self._db.execute(
                f"SELECT data FROM {table} ORDER BY {key}")]
                    for table, key in _TABLES.items()}
        leverage: dict[str, int] = {}
        margin_type: dict[str, str] = {}
        for symbol, lev, mtype in symbols.fetchall():
            leverage[symbol], margin_type[symbol] = int(lev), str(mtype)
        positions = [decode(Position, d) for d in rows["positions"]]
        orders = [decode(Order, d) for d in rows["orders"]]
        algos = [decode(AlgoOrder, d) for d in rows["algo_orders"]]
        return Snapshot(
            wallet=Decimal(meta["wallet"]), next_id=int(meta["next_id"]),
            update_time=int(meta["update_time"]), leverage=leverage, margin_type=margin_type,
            positions={p.symbol: p for p in positions},
            orders={o.order_id: o for o in orders}, algos={a.algo_id: a for a in algos},
            trades=[decode(Trade, d) for d in rows["trades"]])

    def save(self, changes: Changes) -> None:
        """Upsert the changed rows and the counters in one transaction."""
        meta = [("schema", SCHEMA_VERSION), ("wallet", str(changes.wallet)),
                ("next_id", str(changes.next_id)), ("update_time", str(changes.update_time))]
        batches: list[tuple[str, Iterable[tuple[Any, str]]]] = [
            ("positions", ((p.symbol, encode(p)) for p in changes.positions)),
            ("orders", ((o.order_id, encode(o)) for o in changes.orders)),
            ("algo_orders", ((a.algo_id, encode(a)) for a in changes.algos)),
            ("trades", ((t.trade_id, encode(t)) for t in changes.trades)),
        ]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta)
                self._db.executemany("INSERT OR REPLACE INTO symbols VALUES (?, ?, ?)",
                                     changes.symbols)
                for table, rows in batches:
                    self._db.executemany(
                        f"INSERT OR REPLACE INTO {table} VALUES (?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self.writes += 1

    def clear(self) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            for table in ("meta", "symbols", *_TABLES):
                self._db.execute(f"DELETE FROM {table}")
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()
