"""The paper exchange replays a folder of the shared kline format (real history)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from nameko_services.paper_exchange.replay import load_csv

T0 = 1_735_603_200_000  # 2024-12-31, epoch ms as in the shared files
HEADER = "open_time_ms,open,high,low,close,volume\n"


def _write(folder: Path, name: str, start_ms: int, n: int, step_ms: int) -> None:
    body = "".join(f"{T0 + start_ms + i * step_ms},100,101,99,100.5,7\n" for i in range(n))
    with gzip.open(folder / name, "wt") as fh:
        fh.write(HEADER + body)


def test_a_folder_replays_each_symbols_finest_file_from_a_common_start(tmp_path: Path) -> None:
    _write(tmp_path, "BTCUSDT-5m.csv.gz", 0, 10, 300_000)
    _write(tmp_path, "BTCUSDT-1h.csv.gz", 0, 3, 3_600_000)
    _write(tmp_path, "ETHUSDT-1m.csv.gz", 600_000, 20, 60_000)
    _write(tmp_path, "ETHUSDT-5m.csv.gz", 600_000, 5, 300_000)

    series = load_csv(tmp_path, frozenset({"BTCUSDT", "ETHUSDT"}))

    assert sorted(series) == ["BTCUSDT", "ETHUSDT"]
    assert len(series["ETHUSDT"]) == 20  # the 1m file, not the 5m one
    assert series["BTCUSDT"][0].open_time == T0 + 600_000  # aligned on ETH's first candle
    assert len(series["BTCUSDT"]) == 8


def test_one_shared_format_file_takes_its_symbol_from_the_name(tmp_path: Path) -> None:
    _write(tmp_path, "DOGEUSDT-5m.csv.gz", 0, 4, 300_000)

    series = load_csv(tmp_path / "DOGEUSDT-5m.csv.gz")

    assert list(series) == ["DOGEUSDT"] and series["DOGEUSDT"][3].close == 100.5


def test_a_folder_without_kline_files_fails_at_start(tmp_path: Path) -> None:
    _write(tmp_path, "BTCUSDT-1h.csv.gz", 0, 3, 3_600_000)

    with pytest.raises(ValueError, match="no SYMBOL"):
        load_csv(tmp_path)
