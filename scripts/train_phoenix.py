"""Fit the Phoenix 95 model on kline history, walk forward, and write its report.

    # the shipped model: real Binance USD-M history (the shared kline folder)
    .venv/bin/python scripts/train_phoenix.py --data ../shared/data/klines

    # score any kline files with the shipped model (JSON metrics on the last line)
    .venv/bin/python scripts/train_phoenix.py --evaluate ../shared/data/klines/ETHUSDT-5m.csv.gz

    # the paper exchange's simulated market (a random walk), as a CSV with a symbol column
    .venv/bin/python scripts/train_phoenix.py --make-paper-csv \
        nameko_services/brain/model/paper_market_5m.csv

Inputs (``--data`` / ``--evaluate``): files or folders in the shared kline format
(``SYMBOL-5m.csv.gz``, header ``open_time_ms,open,high,low,close,volume``; 1m files are
aggregated to 5m, 15m/1h files are left out of fitting) or CSVs with a ``symbol`` column.

Every 5m bar is a candidate entry, long and short; its label is whether the bracket (TP
+take_profit_percent before SL -stop_loss_percent, from config) ends in a net profit, fees
included, a bar touching both counting as the stop. A walk-forward split in time scores
the model out of sample, pooled and per symbol (Brier, log-loss and AUC against the base
rate, reliability, the win rate of the brackets the gates would take). The shipped model
is then fitted on all of the history, unless the walk-forward found no edge: then it is
the base rate alone. The model file carries its provenance (data files and hashes,
periods, metrics, library versions).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from nameko_services.brain.evaluation import gate_mask, report, scores, walk_forward  # noqa: E402
from nameko_services.brain.features import FAST_MS, KLINE_LIMIT, Candles  # noqa: E402
from nameko_services.brain.history import Series, entry_series, iso, read_paths  # noqa: E402
from nameko_services.brain.model import DEFAULT_MODEL_PATH, PhoenixModel  # noqa: E402
from nameko_services.brain.training import (  # noqa: E402
    DEFAULT_HORIZON,
    base_rate_model,
    build_dataset,
    fit_selected,
    predict,
    reliability,
)
from scripts.phoenix_report import (  # noqa: E402
    analysis_settings,
    reliability_plot,
    report_section,
    write_csv,
    write_report,
)

REPORT = ROOT / "docs" / "phoenix95.md"
PLOT = ROOT / "docs" / "phoenix95_reliability.png"
PAPER_EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00Z, so the generated CSV is reproducible
DAY_MS = 86_400_000


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


def library_versions() -> dict[str, str]:
    import sklearn

    return {"python": platform.python_version(), "numpy": np.__version__,
            "scikit-learn": sklearn.__version__}


def fit_history(series: list[Series], args: argparse.Namespace, tp: float, sl: float,
                fee: float, settings: Any) -> tuple[PhoenixModel, dict[str, Any]]:
    names = [s.symbol for s in series]
    data = build_dataset([s.candles for s in series], tp, sl, args.horizon, fee=fee)
    purge = args.horizon * FAST_MS
    wf = walk_forward(data, test_fraction=args.test_fraction, folds=args.folds, purge_ms=purge)
    ev = report(wf, names, settings)
    pooled = ev["pooled"]
    edge = (pooled["log_loss_model"] < pooled["log_loss_base_rate"]
            and pooled["brier_model"] < pooled["brier_base_rate"])
    meta: dict[str, Any] = {
        "trained_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ"),
        "data": [s.source for s in series], "series": names,
        "period": {"from": iso(float(data.time.min())), "to": iso(float(data.time.max()))},
        "tp_pct": tp, "sl_pct": sl, "fee_per_side": fee, "horizon_bars": args.horizon,
        "test_fraction": args.test_fraction, "folds": args.folds, "purge_ms": purge,
        "kline_limit": KLINE_LIMIT, "n_entries": int(len(data.y)),
        "libraries": library_versions(),
        "shipped": "fitted" if edge else "base_rate",
        "shipped_reason": (
            "walk-forward log-loss and Brier beat the base rate" if edge else
            "walk-forward log-loss or Brier did not beat the base rate: no edge, "
            "the model is the base rate"),
    }
    if edge:
        model, _ = fit_selected(data, embargo_ms=purge, meta=meta)
    else:
        model = base_rate_model(data, meta=meta)
    slim = {"pooled": {k: v for k, v in pooled.items() if k != "reliability"},
            "per_symbol": {k: {m: v for m, v in s.items() if m != "reliability"}
                           for k, s in ev["per_symbol"].items()},
            "folds": ev["folds"]}
    model = PhoenixModel.from_json({**model.to_json(),
                                    "meta": {**model.meta, "evaluation": slim}})
    return model, ev


def evaluate_files(paths: list[Path], model: PhoenixModel, tp: float, sl: float, fee: float,
                   settings: Any) -> dict[str, Any]:
    """The shipped model's scores on any kline files, per series and pooled."""
    ps: list[np.ndarray[Any, Any]] = []
    ys: list[np.ndarray[Any, Any]] = []
    rs: list[np.ndarray[Any, Any]] = []
    out: dict[str, Any] = {"model": model.version, "per_series": {}}
    for s in read_paths(paths):
        c, interval = s.candles, s.interval_ms
        if interval < FAST_MS and FAST_MS % interval == 0:
            c, interval = c.resample(FAST_MS), FAST_MS
        horizon = max(1, int(DEFAULT_HORIZON * FAST_MS // interval))
        data = build_dataset([c], tp, sl, horizon, fee=fee)
        if len(data.y) < 10:
            continue
        p = predict(model, data.x)
        key = f"{s.symbol}@{interval // 60_000}m"
        res = scores(p, data.y, data.ret, model.base_rate, gate_mask(p, settings))
        res.update(file=s.source["file"], sha256=s.source["sha256"], first=s.source["first"],
                   last=s.source["last"])
        if interval != FAST_MS:
            res["warning"] = (f"the model scores 5m entries; these are {interval // 60_000}m "
                              "bars, so its features mean something else here")
        out["per_series"][key] = res
        ps.append(p)
        ys.append(data.y)
        if data.ret is not None:
            rs.append(data.ret)
    if not ps:
        raise SystemExit("no series with enough candles to score")
    p, y = np.concatenate(ps), np.concatenate(ys)
    out["pooled"] = scores(p, y, np.concatenate(rs), model.base_rate, gate_mask(p, settings))
    out["pooled"]["reliability"] = reliability(p, y)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, nargs="+", help="kline files or folders to fit on")
    ap.add_argument("--csv", type=Path, help="alias of --data for one file")
    ap.add_argument("--evaluate", type=Path, nargs="+", metavar="FILE",
                    help="score these kline files with --model; JSON on the last line")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH, help="for --evaluate")
    ap.add_argument("--make-paper-csv", type=Path, metavar="PATH",
                    help="write history from the paper exchange's simulator to PATH and stop")
    ap.add_argument("--seeds", default="95,96", help="simulator seeds for --make-paper-csv")
    ap.add_argument("--out", type=Path, default=DEFAULT_MODEL_PATH)
    ap.add_argument("--report", type=Path, default=REPORT)
    ap.add_argument("--plot", type=Path, default=PLOT)
    ap.add_argument("--test-fraction", type=float, default=0.4,
                    help="share of the history (latest) scored out of sample")
    ap.add_argument("--folds", type=int, default=4, help="walk-forward folds")
    ap.add_argument("--horizon", type=int, default=DEFAULT_HORIZON,
                    help="5m bars to wait for TP/SL")
    args = ap.parse_args(argv)

    settings = analysis_settings()
    lev, paper = settings.leverage, settings.paper_exchange
    tp, sl, fee = lev.take_profit_percent, lev.stop_loss_percent, paper.taker_fee
    if args.make_paper_csv:
        seeds = [int(s) for s in args.seeds.split(",")]
        n = write_csv(args.make_paper_csv, paper_history(seeds, paper.volatility_annual))
        print(f"wrote {n} 5m bars to {args.make_paper_csv} (seeds {seeds})")
        return 0
    if args.evaluate:
        result = evaluate_files(args.evaluate, PhoenixModel.load(args.model), tp, sl, fee,
                                settings)
        for key, res in result["per_series"].items():
            print(f"{key}: n={res['n']} brier {res['brier_model']:.5f} vs "
                  f"{res['brier_base_rate']:.5f}, auc {res['auc']:.4f}", file=sys.stderr)
        print(json.dumps(result, default=float))
        return 0
    paths = list(args.data or []) + ([args.csv] if args.csv else [])
    if not paths:
        ap.error("--data (or --csv) is required")
    series = entry_series(read_paths(paths, ROOT, FAST_MS))
    if not series:
        ap.error("no 5m (or finer) series in the given files")
    model, ev = fit_history(series, args, tp, sl, fee, settings)
    model.save(args.out)
    reliability_plot(ev, args.plot)
    write_report(args.report, report_section(model, ev, args.plot))
    pooled = ev["pooled"]
    print(f"{model.version} ({model.meta['shipped']}): walk-forward Brier "
          f"{pooled['brier_model']:.5f} vs base rate {pooled['brier_base_rate']:.5f}; "
          f"log-loss {pooled['log_loss_model']:.5f} vs {pooled['log_loss_base_rate']:.5f}; "
          f"AUC {pooled['auc']:.4f} -> {args.out}, {args.report}, {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
