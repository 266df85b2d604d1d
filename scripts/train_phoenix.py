"""Fit the Phoenix 95 model and write its evaluation report.

    # the shipped default: history from the paper exchange's market simulator
    .venv/bin/python scripts/train_phoenix.py --make-paper-csv \
        nameko_services/brain/model/paper_market_5m.csv
    .venv/bin/python scripts/train_phoenix.py --csv nameko_services/brain/model/paper_market_5m.csv

    # real history (needs internet): download 5m klines through ccxt, then fit on them
    .venv/bin/python scripts/train_phoenix.py --fetch BTCUSDT,ETHUSDT --days 365 \
        --csv var/binance_5m.csv

Every 5m bar is a candidate entry, long and short; its label is whether the bracket
(TP +take_profit_percent before SL -stop_loss_percent, from config) is hit in profit
first. The earlier part of the history trains an L2 logistic regression, the later part
(``--test-fraction``) evaluates it against the base rate: Brier score, log-loss, a
reliability table and plot. The L2 strength is chosen by walk-forward validation inside
the training period, with "the base rate alone" as a candidate (no invented edge). The
model JSON is what the brain loads at start.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nameko_services.brain.features import FAST_MS, Candles  # noqa: E402
from nameko_services.brain.model import DEFAULT_MODEL_PATH, PhoenixModel  # noqa: E402
from nameko_services.brain.training import (  # noqa: E402
    build_dataset,
    candles_from_csv_rows,
    evaluate,
    fit_selected,
)

CSV_FIELDS = ("symbol", "open_time", "open", "high", "low", "close", "volume")
REPORT = ROOT / "docs" / "phoenix95.md"
PLOT = ROOT / "docs" / "phoenix95_reliability.png"
START, END = "<!-- report:start -->", "<!-- report:end -->"
PAPER_EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00Z, so the generated CSV is reproducible


def write_csv(path: Path, series: dict[str, Candles]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_FIELDS)
        for symbol, c in series.items():
            for i in range(len(c)):
                w.writerow([symbol, int(c.open_time[i]), f"{c.open[i]:.8g}", f"{c.high[i]:.8g}",
                            f"{c.low[i]:.8g}", f"{c.close[i]:.8g}", f"{c.volume[i]:.6g}"])
                n += 1
    return n


def _paper_market_module() -> Any:
    """The simulator module alone (it needs only shared.money), without the exchange server
    that ``nameko_services.paper_exchange`` imports."""
    import importlib.util

    path = ROOT / "nameko_services" / "paper_exchange" / "market.py"
    spec = importlib.util.spec_from_file_location("phoenix95_paper_market", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def paper_history(seeds: list[int], volatility: float) -> dict[str, Candles]:
    """One week of 1m history per symbol and seed from the paper exchange's simulator,
    aggregated to 5m. Each seed's week is placed after the previous one in time."""
    market_mod = _paper_market_module()
    out: dict[str, Candles] = {}
    for k, seed in enumerate(seeds):
        now = PAPER_EPOCH_MS + k * (market_mod.HISTORY_MINUTES + 1440) * 60_000
        market = market_mod.Market(seed, volatility, 500, now_ms=now)
        for symbol in market_mod.SYMBOLS:
            rows = [[c.open_time, c.open, c.high, c.low, c.close, c.volume]
                    for c in market.candles_1m(symbol)[:-1]]
            out[f"{symbol}@{seed}"] = Candles.from_rows(rows).resample(FAST_MS)
    return out


def fetch_history(symbols: list[str], days: int) -> dict[str, Candles]:  # pragma: no cover
    """5m klines from Binance USD-M through ccxt (public endpoint, no keys)."""
    import ccxt

    client = ccxt.binanceusdm({"enableRateLimit": True})
    since = int((time.time() - days * 86400) * 1000)
    out: dict[str, Candles] = {}
    for symbol in symbols:
        rows: list[list[float]] = []
        cursor = since
        while True:
            batch = client.fetch_ohlcv(symbol, "5m", cursor, 1500)
            if not batch:
                break
            rows.extend(batch)
            cursor = int(batch[-1][0]) + FAST_MS
            if len(batch) < 1500:
                break
        out[symbol] = Candles.from_rows(rows[:-1])  # the last bar is still forming
        print(f"{symbol}: {len(rows)} bars", file=sys.stderr)
    return out


def reliability_plot(ev: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = ev["reliability"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.plot([b["mean_p"] for b in bins], [b["observed"] for b in bins], "o-",
            label="Phoenix 95 model (held-out)")
    ax.axhline(ev["base_rate_test"], color="tab:orange", lw=1, label="base rate (test)")
    for b in bins:
        ax.annotate(str(int(b["count"])), (b["mean_p"], b["observed"]), fontsize=7,
                    textcoords="offset points", xytext=(4, -10))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability of TP before SL")
    ax.set_ylabel("observed frequency")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_section(model: PhoenixModel, ev: dict[str, Any], plot: Path, source: str) -> str:
    lines = [
        START,
        f"Model `{model.version}`, fitted {model.meta.get('trained_at', '')} on `{source}` "
        f"(bracket TP +{model.meta.get('tp_pct')} / SL -{model.meta.get('sl_pct')}).",
        "",
        f"Held-out later period: {ev['n_test']} candidate entries (train: {ev['n_train']}).",
        "",
        "| metric | model | base rate |",
        "|---|---|---|",
        f"| Brier score | {ev['brier_model']:.5f} | {ev['brier_base_rate']:.5f} |",
        f"| log-loss | {ev['log_loss_model']:.5f} | {ev['log_loss_base_rate']:.5f} |",
        "",
        f"Base rate: train {ev['base_rate_train']:.4f}, test {ev['base_rate_test']:.4f}. "
        f"Model probabilities on the test period: mean {ev['p_mean']:.4f}, "
        f"range {ev['p_min']:.4f}-{ev['p_max']:.4f}.",
        "",
        "| predicted bin | mean predicted | observed | entries |",
        "|---|---|---|---|",
        *[f"| {b['lo']:.1f}-{b['hi']:.1f} | {b['mean_p']:.4f} | {b['observed']:.4f} | "
          f"{int(b['count'])} |" for b in ev["reliability"]],
        "",
        "| feature | coefficient (standardised) |",
        "|---|---|",
        *[f"| {f} | {w:+.5f} |" for f, w in zip(model.features, model.coef, strict=True)],
        f"| intercept | {model.intercept:+.5f} |",
        "",
        f"Regularisation chosen by walk-forward validation: "
        f"`{model.meta.get('selection', {}).get('selected')}` (candidates and their "
        f"validation log-loss are in the model file's `meta.selection`).",
        "",
        f"![reliability]({plot.name})",
        END,
    ]
    return "\n".join(lines)


def write_report(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Phoenix 95 model\n\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Evaluation\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", type=Path, help="5m OHLCV: " + ",".join(CSV_FIELDS))
    ap.add_argument("--make-paper-csv", type=Path, metavar="PATH",
                    help="write history from the paper exchange's simulator to PATH and stop")
    ap.add_argument("--seeds", default="95,96", help="simulator seeds for --make-paper-csv")
    ap.add_argument("--fetch", metavar="SYMBOLS", help="download 5m klines via ccxt to --csv")
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--out", type=Path, default=DEFAULT_MODEL_PATH)
    ap.add_argument("--report", type=Path, default=REPORT)
    ap.add_argument("--plot", type=Path, default=PLOT)
    ap.add_argument("--test-fraction", type=float, default=0.3)
    ap.add_argument("--horizon", type=int, default=864, help="5m bars to wait for TP/SL")
    args = ap.parse_args(argv)

    from shared.settings import LeverageSettings, PaperExchangeSettings

    lev, paper = LeverageSettings(), PaperExchangeSettings()  # config.yaml defaults
    if args.make_paper_csv:
        seeds = [int(s) for s in args.seeds.split(",")]
        n = write_csv(args.make_paper_csv, paper_history(seeds, paper.volatility_annual))
        print(f"wrote {n} 5m bars to {args.make_paper_csv} (seeds {seeds})")
        return 0
    if args.csv is None:
        ap.error("--csv is required")
    if args.fetch:
        write_csv(args.csv, fetch_history(args.fetch.split(","), args.days))
    with args.csv.open() as fh:
        series = candles_from_csv_rows(list(csv.DictReader(fh)))
    tp, sl = lev.take_profit_percent, lev.stop_loss_percent
    data = build_dataset(list(series.values()), tp, sl, args.horizon)
    train, test = data.split(args.test_fraction, embargo_ms=args.horizon * FAST_MS)
    try:
        source = str(args.csv.resolve().relative_to(ROOT))
    except ValueError:
        source = args.csv.name
    model, _ = fit_selected(train, embargo_ms=args.horizon * FAST_MS, meta={
        "trained_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ"), "source": source,
        "series": sorted(series), "tp_pct": tp, "sl_pct": sl, "horizon_bars": args.horizon,
        "test_fraction": args.test_fraction,
    })
    ev = evaluate(model, train, test)
    model = PhoenixModel.from_json({**model.to_json(), "meta": {**model.meta, "evaluation": {
        k: v for k, v in ev.items() if k != "reliability"}}})
    model.save(args.out)
    reliability_plot(ev, args.plot, f"Phoenix 95 reliability, held-out ({ev['n_test']} entries)")
    write_report(args.report, report_section(model, ev, args.plot, source))
    print(f"{model.version}: Brier {ev['brier_model']:.5f} vs base rate "
          f"{ev['brier_base_rate']:.5f}; log-loss {ev['log_loss_model']:.5f} vs "
          f"{ev['log_loss_base_rate']:.5f} -> {args.out}, {args.report}, {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
