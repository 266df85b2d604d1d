"""Backtest the whole decision on real candles: strategy alerts -> brain -> risk -> fills.

    .venv/bin/python scripts/backtest.py --data ../shared/data/klines          # a year, 5 symbols
    .venv/bin/python scripts/backtest.py --data FILE_OR_FOLDER --days 30 --symbols BTCUSDT

Reference strategies (``ema_cross``, ``rsi_reversal``) fire alerts on the replayed 5m
candles, each with its own confidence; every alert goes through the real
``BrainEngine.analyze`` and ``RiskEngine.check`` (see scripts/backtest_sim.py for how
fills, fees and liquidations are resolved). Each strategy runs three ways: without the
Phoenix 95 gates (every alert the caps allow, fixed sizing), with the gates and fixed
sizing, and with the gates and Kelly sizing (the shipped config). Writes a markdown table
into ``--report`` (docs/backtest.md), an equity-curve PNG and the results as JSON (what the
dashboard's Backtest page shows).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nameko_services.brain.features import FAST_MS, Candles  # noqa: E402
from nameko_services.brain.history import entry_series, iso, read_paths  # noqa: E402
from nameko_services.brain.model import DEFAULT_MODEL_PATH, PhoenixModel  # noqa: E402
from scripts.backtest_sim import STRATEGIES, RunResult, run, summary  # noqa: E402
from scripts.phoenix_report import analysis_settings  # noqa: E402

OUT_DIR = ROOT / "docs"
START, END = "<!-- backtest:start -->", "<!-- backtest:end -->"
VARIANTS: dict[str, dict[str, Any]] = {
    "no gates, fixed": {"trading": {"min_confidence": 0.0, "sizing": "fixed"},
                        "phoenix_95": {"threshold": 0.0, "execute_threshold": 0.0}},
    "gates, fixed": {"trading": {"sizing": "fixed"}},
    "gates, Kelly": {},
}
# risk's account limits halt trading at a 20 % drawdown (until an operator resumes); "off"
# lifts them so that a whole year of each variant's signals can be compared
RISK_LIMITS: dict[str, dict[str, Any]] = {
    "on": {}, "off": {"risk": {"max_drawdown": 1.0, "max_daily_loss": 1.0}},
}


def load(paths: list[Path], symbols: list[str] | None, days: float
         ) -> tuple[dict[str, Candles], list[dict[str, Any]]]:
    """The last ``days`` of each symbol's 5m candles (one series per symbol)."""
    out: dict[str, Candles] = {}
    sources = []
    for s in entry_series(read_paths(paths, ROOT, FAST_MS)):
        if (symbols and s.symbol not in symbols) or s.symbol in out:
            continue
        c = s.candles
        first = float(c.open_time[-1]) - days * 86_400_000
        c = c.head(len(c)) if first <= c.open_time[0] else _since(c, first)
        out[s.symbol] = c
        sources.append({**s.source, "replayed_from": iso(float(c.open_time[0])),
                        "replayed_to": iso(float(c.open_time[-1]))})
    return out, sources


def _since(c: Candles, first_ms: float) -> Candles:
    i = int((c.open_time < first_ms).sum())
    return Candles(c.open_time[i:], c.open[i:], c.high[i:], c.low[i:], c.close[i:],
                   c.volume[i:])


def equity_plot(curves: dict[str, RunResult], path: Path, initial: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    names = sorted({k.split(" | ")[0] for k in curves})
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 3.2 * len(names)), squeeze=False)
    for ax, strat in zip(axes[:, 0], names, strict=True):
        for key, r in curves.items():
            if key.split(" | ")[0] != strat:
                continue
            when = (r.equity_time / 86_400_000).astype("float64")  # days since the epoch
            ax.plot(mdates.num2date(when), r.equity, lw=1, label=key.split(" | ")[1])
        ax.axhline(initial, color="grey", lw=0.7, ls="--")
        ax.set_title(f"{strat}: equity (USDT), marked to market hourly", fontsize=9)
        ax.legend(fontsize=8, loc="best")
        ax.grid(alpha=0.3)
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    def fmt(v: float | None, spec: str) -> str:
        return "—" if v is None else format(v, spec)

    lines = ["| strategy | variant | alerts | brain approved | trades | win rate | PnL net "
             "(USDT) | fees | return | max drawdown | time in market | mean exposure | halted |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, s in results.items():
        strat, variant = key.split(" | ")
        lines.append(
            f"| {strat} | {variant} | {s['alerts']} | {s['brain_approved']} | {s['trades']} | "
            f"{fmt(s['win_rate'], '.3f')} | {s['pnl_net']:,.0f} | {s['fees']:,.0f} | "
            f"{s['return_pct']:+.1f} % | {s['max_drawdown_pct']:.1f} % | "
            f"{s['time_in_market_pct']:.0f} % | {s['mean_exposure']:.2f}x | "
            f"{s.get('halted_at') or '—'} |")
    return lines


def write_report(path: Path, meta: dict[str, Any], results: dict[str, dict[str, Any]],
                 png: Path) -> None:
    files = ", ".join(f"`{d['file']}` ({d['replayed_from'][:10]}…{d['replayed_to'][:10]})"
                      for d in meta["data"])
    section = "\n".join([
        START,
        f"Run {meta['run_at']} in {meta['seconds']:.0f} s ({meta['cpu_seconds']:.0f} s of CPU)"
        f": model `{meta['model']}`, "
        f"initial equity {meta['initial']:,.0f} USDT, taker fee {meta['fee']} per side; "
        f"candles {files}.",
        "",
        *table(results),
        "",
        "Rejections (most frequent, per run) and exits are in "
        f"`{meta['json']}`.",
        "",
        f"![equity]({png.name})",
        END,
    ])
    text = path.read_text() if path.exists() else "# Backtest\n\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Last run\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, nargs="+", required=True)
    ap.add_argument("--symbols", help="comma-separated (default: every symbol in --data)")
    ap.add_argument("--days", type=float, default=365.0, help="the last N days of each symbol")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--initial", type=float, default=10_000.0)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR,
                    help="where backtest_last.json and backtest_equity.png go")
    ap.add_argument("--report", type=Path, default=OUT_DIR / "backtest.md")
    ap.add_argument("--risk-limits", choices=("on", "off", "both"), default="both",
                    help="risk's drawdown and daily-loss halts (default: both ways)")
    args = ap.parse_args(argv)

    started, cpu = time.monotonic(), time.process_time()
    candles, sources = load(args.data, args.symbols.split(",") if args.symbols else None,
                            args.days)
    if not candles:
        ap.error("no 5m (or finer) candles in --data")
    model = PhoenixModel.load(args.model)
    curves: dict[str, RunResult] = {}
    results: dict[str, dict[str, Any]] = {}
    base = analysis_settings()
    fee = base.paper_exchange.taker_fee
    for strat in args.strategies.split(","):
        alerts = [a for sym, c in candles.items() for a in STRATEGIES[strat](sym, c)]
        modes = ("on", "off") if args.risk_limits == "both" else (args.risk_limits,)
        for (variant, overrides), mode in itertools.product(VARIANTS.items(), modes):
            settings = base.model_copy(update={
                section: getattr(base, section).model_copy(update=values)
                for section, values in {**overrides, **RISK_LIMITS[mode]}.items()})
            r = run(candles, alerts, settings, model, fee, args.initial)
            key = f"{strat} | {variant}, risk limits {mode}"
            curves[key], results[key] = r, summary(r, args.initial)
            print(f"{key}: {results[key]['trades']} trades, win rate "
                  f"{results[key]['win_rate']}, PnL {results[key]['pnl_net']:,.0f}",
                  file=sys.stderr)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    png, js = args.out_dir / "backtest_equity.png", args.out_dir / "backtest_last.json"
    equity_plot(curves, png, args.initial)
    meta = {"run_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ"), "model": model.version,
            "initial": args.initial, "fee": fee, "data": sources,
            "bars": {s: len(c) for s, c in candles.items()}, "bar_ms": FAST_MS,
            "seconds": time.monotonic() - started, "cpu_seconds": time.process_time() - cpu,
            "json": js.name}
    js.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    write_report(args.report, meta, results, png)
    print(json.dumps({"seconds": round(meta["seconds"], 1),
                      "results": {k: {m: v[m] for m in ("trades", "win_rate", "pnl_net",
                                                        "max_drawdown_pct")}
                                  for k, v in results.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
