"""Reading kline history for fitting, evaluating and backtesting the Phoenix 95 model.

Two formats are read:

* the shared kline format (``/work/shared/data/klines``): one file per symbol and
  interval, ``SYMBOL-5m.csv.gz`` (or plain ``.csv``), header
  ``open_time_ms,open,high,low,close,volume``;
* the older single CSV with a ``symbol`` column
  (``symbol,open_time,open,high,low,close,volume``), e.g. the paper market file.

Every file read is recorded with its SHA-256 and span, so a fitted model can say exactly
which data it came from (its provenance).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from nameko_services.brain.features import FAST_MS, Candles

SHARED_NAME = re.compile(r"^([A-Z0-9]+)-(\d+)([mhd])\.csv(\.gz)?$")
UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000}


@dataclass(frozen=True)
class Series:
    """One symbol's candles at one interval, and where they came from."""

    symbol: str
    interval_ms: int
    candles: Candles
    source: dict[str, Any]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _text(path: Path) -> str:
    raw = path.read_bytes()
    return gzip.decompress(raw).decode() if path.suffix == ".gz" else raw.decode()


def iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%MZ")


def _interval(times: np.ndarray[Any, Any]) -> int:
    if len(times) < 2:
        return FAST_MS
    return int(np.median(np.diff(times)))


def _provenance(path: Path, root: Path | None, c: Candles, interval_ms: int) -> dict[str, Any]:
    try:
        name = str(path.resolve().relative_to(root.resolve())) if root else path.name
    except ValueError:  # outside the root: the folder and the name identify it with the hash
        name = f"{path.resolve().parent.name}/{path.name}"
    return {"file": name, "sha256": _sha256(path), "rows": len(c),
            "first": iso(float(c.open_time[0])) if len(c) else None,
            "last": iso(float(c.open_time[-1])) if len(c) else None,
            "interval_ms": interval_ms}


def read_file(path: Path, root: Path | None = None) -> list[Series]:
    """All series of one file (one for the shared format, one per symbol otherwise)."""
    text = _text(path)
    header = text.split("\n", 1)[0].strip().lower().split(",")
    if header[:1] == ["open_time_ms"]:
        arr = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, ndmin=2)
        c = Candles(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], arr[:, 4], arr[:, 5])
        m = SHARED_NAME.match(path.name)
        symbol = m.group(1) if m else path.name.split("-")[0].split(".")[0].upper()
        interval = int(m.group(2)) * UNIT_MS[m.group(3)] if m else _interval(c.open_time)
        return [Series(symbol, interval, c, _provenance(path, root, c, interval))]
    if "symbol" not in header:
        raise ValueError(f"{path}: header must start with open_time_ms or have a symbol column")
    by_symbol: dict[str, list[list[float]]] = {}
    for r in csv.DictReader(io.StringIO(text)):
        by_symbol.setdefault(r["symbol"], []).append(
            [float(r["open_time"]), float(r["open"]), float(r["high"]), float(r["low"]),
             float(r["close"]), float(r["volume"])])
    out = []
    for sym, rows in by_symbol.items():
        c = Candles.from_rows(sorted(rows))
        interval = _interval(c.open_time)
        out.append(Series(sym, interval, c, _provenance(path, root, c, interval)))
    return out


def read_paths(paths: list[Path], root: Path | None = None,
               max_interval_ms: int | None = None) -> list[Series]:
    """Files and folders; a folder contributes its top-level kline files (not sub-folders),
    those of at most ``max_interval_ms`` when given."""
    out: list[Series] = []
    for p in paths:
        files = [p]
        if p.is_dir():
            files = []
            for f in sorted(p.iterdir()):
                m = SHARED_NAME.match(f.name)
                if m and (max_interval_ms is None
                          or int(m.group(2)) * UNIT_MS[m.group(3)] <= max_interval_ms):
                    files.append(f)
        for f in files:
            out.extend(read_file(f, root))
    return out


def entry_series(series: list[Series]) -> list[Series]:
    """The 5m series to fit on: 5m files as they are, finer ones aggregated to 5m, and
    coarser ones left out (the model scores 5m entries)."""
    out = []
    for s in series:
        if s.interval_ms == FAST_MS:
            out.append(s)
        elif s.interval_ms < FAST_MS and FAST_MS % s.interval_ms == 0:
            out.append(Series(s.symbol, FAST_MS, s.candles.resample(FAST_MS), s.source))
    return out
