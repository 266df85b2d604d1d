"""scripts/backtest.py on a small slice: alerts through the real brain and risk engines."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from pathlib import Path

import numpy as np

from nameko_services.brain.features import Candles
from nameko_services.brain.training import synthetic_market
from scripts.backtest_sim import Trade, resolve_exit

T0 = 1_735_603_200_000


def _file(path: Path, c: Candles) -> None:
    body = "".join(f"{int(c.open_time[i])},{float(c.open[i])},{float(c.high[i])},"
                   f"{float(c.low[i])},{float(c.close[i])},{float(c.volume[i])}\n"
                   for i in range(len(c)))
    with gzip.open(path, "wt") as fh:
        fh.write("open_time_ms,open,high,low,close,volume\n" + body)


def test_backtest_on_a_small_slice_reports_every_strategy_with_and_without_gates(
        tmp_path, capsys, secrets_env):
    from scripts.backtest import main

    _file(tmp_path / "BTCUSDT-5m.csv.gz", synthetic_market(1400, seed=20, sigma=0.004,
                                                           start_ms=T0))
    out = tmp_path / "out"

    assert main(["--data", str(tmp_path), "--days", "3", "--out-dir", str(out),
                 "--report", str(out / "backtest.md")]) == 0

    saved = json.loads((out / "backtest_last.json").read_text())["results"]
    assert set(saved) == {f"{s} | {v}, risk limits {m}" for s in ("ema_cross", "rsi_reversal")
                          for v in ("no gates, fixed", "gates, fixed", "gates, Kelly")
                          for m in ("on", "off")}
    for r in saved.values():
        assert r["trades"] <= r["brain_approved"] <= r["alerts"]
        assert r["trades"] == sum(r["exits"].values())
    ungated = saved["ema_cross | no gates, fixed, risk limits off"]
    assert ungated["brain_approved"] == ungated["alerts"] > 0  # no gate refuses anything
    assert ungated["trades"] > 0 and ungated["fees"] > 0
    assert (out / "backtest_equity.png").stat().st_size > 0
    assert "| ema_cross | gates, Kelly, risk limits on |" in (out / "backtest.md").read_text()
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]


def _trade(side: str, entry: float = 100.0) -> Trade:
    sign = 1 if side == "LONG" else -1
    return Trade("BTCUSDT", side, "s", 0, 0.0, entry, 1.0, entry / 20,
                 entry * (1 - 0.02 * sign), entry * (1 + 0.02 * sign),
                 entry * (1 - 0.048 * sign), 0.8, 0.8)


def _bars(*ohlc: tuple[float, float, float, float]) -> Candles:
    a = np.array([(100.0, 100.0, 100.0, 100.0), *ohlc])
    t = T0 + 300_000 * np.arange(len(a), dtype=float)
    return Candles(t, a[:, 0], a[:, 1], a[:, 2], a[:, 3], np.ones(len(a)))


def test_a_bar_through_both_levels_fills_the_stop_and_a_gap_fills_at_the_open():
    both = _trade("LONG")
    resolve_exit(both, _bars((100, 103, 97, 102.5)))
    gapped = _trade("SHORT")
    resolve_exit(gapped, _bars((100, 101, 99, 100), (103, 103.5, 102.9, 103)))
    liquidated = _trade("LONG")
    resolve_exit(liquidated, _bars((94, 95, 93, 94)))

    assert (both.reason, both.exit) == ("stop_loss", 98.0)
    assert (gapped.reason, gapped.exit, gapped.exit_bar) == ("stop_loss", 103.0, 2)
    assert liquidated.reason == "liquidation"
    assert Decimal(str(liquidated.exit)) == Decimal(str(100 * (1 - 0.048)))
