"""The Phoenix 95 report: the markdown section of docs/phoenix95.md and the reliability PNG."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from nameko_services.brain.features import Candles
from nameko_services.brain.model import PhoenixModel

CSV_FIELDS = ("symbol", "open_time", "open", "high", "low", "close", "volume")
START, END = "<!-- report:start -->", "<!-- report:end -->"


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


def reliability_plot(ev: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pooled = ev["pooled"]
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    for name, s in ev["per_symbol"].items():
        bins = [b for b in s["reliability"] if b["count"] >= 30]
        ax.plot([b["mean_p"] for b in bins], [b["observed"] for b in bins], ".-", lw=0.8,
                alpha=0.6, label=name)
    bins = [b for b in pooled["reliability"] if b["count"] >= 30]  # a handful is noise
    ax.plot([b["mean_p"] for b in bins], [b["observed"] for b in bins], "o-", color="black",
            lw=2, label="pooled")
    for b in bins:
        ax.annotate(str(int(b["count"])), (b["mean_p"], b["observed"]), fontsize=7,
                    textcoords="offset points", xytext=(4, -10))
    ax.axhline(pooled["observed_rate"], color="tab:orange", lw=1, label="observed base rate")
    lo = max(0.0, min(pooled["p_min"], pooled["observed_rate"]) - 0.1)
    hi = min(1.0, max(pooled["p_max"], pooled["observed_rate"]) + 0.1)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("predicted probability of a net-profitable bracket")
    ax.set_ylabel("observed frequency")
    ax.set_title(f"Phoenix 95 walk-forward reliability, real history ({pooled['n']} entries;"
                 " bins of 30+)", fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _row(name: str, s: dict[str, Any]) -> str:
    gated = "—" if s["win_rate_gated"] is None else f"{s['win_rate_gated']:.4f}"
    return (f"| {name} | {s['n']} | {s['observed_rate']:.4f} | {s['brier_model']:.5f} | "
            f"{s['brier_base_rate']:.5f} | {s['log_loss_model']:.5f} | "
            f"{s['log_loss_base_rate']:.5f} | {s['auc']:.4f} | {s['win_rate_all']:.4f} | "
            f"{s['n_gated']} | {gated} | {s['win_rate_top_decile']:.4f} |")


def report_section(model: PhoenixModel, ev: dict[str, Any], plot: Path) -> str:
    m = model.meta
    pooled = ev["pooled"]
    files = ", ".join(f"`{d['file']}` ({d['first'][:10]}…{d['last'][:10]}, "
                      f"sha256 {d['sha256'][:12]})" for d in m["data"])
    lines = [
        START,
        f"Shipped model `{model.version}` ({m['shipped']}: {m['shipped_reason']}), "
        f"fitted {m['trained_at']} on {m['n_entries']} candidate entries "
        f"{m['period']['from']} … {m['period']['to']} from {files}. Bracket TP "
        f"+{m['tp_pct']} / SL −{m['sl_pct']}, taker fee {m['fee_per_side']} per side, "
        f"horizon {m['horizon_bars']} bars.",
        "",
        "Walk-forward folds (each fitted only on entries that ended before its test period;"
        f" purge {int(m['purge_ms']) // 86_400_000} days):",
        "",
        "| fold test period | trained on | train entries | test entries | L2 selected |",
        "|---|---|---|---|---|",
        *[f"| {f['test_from']} … {f['test_to']} | {f['train_from']} … {f['train_to']} | "
          f"{f['n_train']} | {f['n_test']} | {f['selected']} |" for f in ev["folds"]],
        "",
        "Out-of-sample scores (the folds' predictions together). *Gated*: the brackets the "
        "gates would take on the model's probability alone (p ≥ threshold, final ≥ "
        "execute_threshold, Kelly f* > 0); *top decile*: the 10 % highest p.",
        "",
        "| series | entries | observed win rate | Brier model | Brier base | log-loss model"
        " | log-loss base | AUC | win rate all | gated | win rate gated | win rate top 10 % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[_row(k, s) for k, s in ev["per_symbol"].items()],
        _row("**pooled**", pooled),
        "",
        f"Pooled: probabilities range {pooled['p_min']:.4f}–{pooled['p_max']:.4f} (mean "
        f"{pooled['p_mean']:.4f}); mean net return per bracket {pooled['mean_net_return_all']:+.5f}"
        f" (all), {pooled['mean_net_return_top_decile']:+.5f} (top decile).",
        "",
        "| predicted bin | mean predicted | observed | entries |",
        "|---|---|---|---|",
        *[f"| {b['lo']:.1f}-{b['hi']:.1f} | {b['mean_p']:.4f} | {b['observed']:.4f} | "
          f"{int(b['count'])} |" for b in pooled["reliability"]],
        "",
        "Shipped coefficients (standardised features):",
        "",
        "| feature | coefficient |",
        "|---|---|",
        *[f"| {f} | {w:+.5f} |" for f, w in zip(model.features, model.coef, strict=True)],
        f"| intercept | {model.intercept:+.5f} (base rate {model.base_rate:.4f}) |",
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


OFFLINE_SECRETS = ("SECURITY__WEBHOOK_SECRET", "SECURITY__API_KEYS", "MESSAGE_QUEUE__PASSWORD",
                   "EXCHANGE__API_KEY", "EXCHANGE__API_SECRET")


def analysis_settings(**overrides: Any) -> Any:
    """config.yaml (and .env) as the services read it, for an offline analysis that talks to
    nothing: missing secrets get inert placeholders in this process only."""
    import os

    from shared.settings import ENV_PREFIX, load_settings

    for key in OFFLINE_SECRETS:
        value = '["offline-analysis"]' if key.endswith("API_KEYS") else "offline-analysis"
        os.environ.setdefault(ENV_PREFIX + key, value)
    return load_settings(**overrides)
