"""The backtest's replay: reference strategies' alerts through the real brain and risk.

Alerts of a TradingView-style strategy, computed on the replayed 5m candles, go through
``BrainEngine.analyze`` (features, the Phoenix 95 model, the three gates, Kelly or fixed
sizing, caps) with a MarketView over the candles, then through ``RiskEngine.check`` (the
three stages) with a snapshot of the simulated account. An approved intent fills at the
alert bar's close (a market order, taker fee) with its bracket; its exit is resolved bar
by bar like the exchange's matching would see the prices: a bar that reaches the stop
fills the stop (at the open if it gapped through; at the isolated liquidation price of
``shared.money`` when the gap passes it, losing the margin), else a bar that reaches the
take-profit fills it; both in one bar = the stop (the worse order). Funding is ignored.
The paper exchange's own matcher is not driven in-process (its server is being rebuilt);
the resolution above uses the same money math (``shared.money``) and fee rates.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any

import numpy as np

from nameko_services.brain.engine import BrainEngine
from nameko_services.brain.features import (
    FAST_MS,
    SLOW_MS,
    Array,
    Candles,
    ema,
    rsi,
    unsigned_features,
)
from nameko_services.brain.model import PhoenixModel
from nameko_services.brain.track_record import ClosedTrade, TrackRecord
from nameko_services.risk.engine import OpenPosition, RiskEngine, Snapshot, breaches
from shared.models import Signal
from shared.money import DEFAULT_BRACKETS, liquidation_price
from shared.settings import Settings

# tick, step, min quantity, min notional: the paper exchange's (and Binance's) filters
FILTERS: dict[str, tuple[str, str, str, str]] = {
    "BTCUSDT": ("0.10", "0.001", "0.001", "100"), "ETHUSDT": ("0.01", "0.001", "0.001", "20"),
    "BNBUSDT": ("0.010", "0.01", "0.01", "5"), "ADAUSDT": ("0.00010", "1", "1", "5"),
    "DOGEUSDT": ("0.000010", "1", "1", "5"),
}


@dataclass(frozen=True)
class Alert:
    bar: int  # index of the 5m bar whose close fired it
    symbol: str
    side: str
    confidence: float
    strategy: str


def ema_cross_alerts(symbol: str, c: Candles, fast: int = 9, slow: int = 21) -> list[Alert]:
    """EMA(9) crossing EMA(21): LONG up, SHORT down. Confidence 0.55, plus up to 0.35 when
    the 1h trend (EMA12-EMA48 over ATR, the model's trend_slow) agrees, minus when not."""
    diff = ema(c.close, fast) - ema(c.close, slow)
    trend = unsigned_features(c, c.resample(SLOW_MS), 0.02)["trend_slow"]
    out = []
    for i in np.flatnonzero(np.sign(diff[1:]) != np.sign(diff[:-1])) + 1:
        if i < 60:
            continue
        side = 1 if diff[i] > 0 else -1
        conf = float(np.clip(0.55 + 0.35 * np.tanh(side * trend[i]), 0.2, 0.95))
        out.append(Alert(int(i), symbol, "LONG" if side > 0 else "SHORT", round(conf, 3),
                         "ema_cross"))
    return out


def rsi_reversal_alerts(symbol: str, c: Candles, low: float = 30, high: float = 70
                        ) -> list[Alert]:
    """RSI(14) leaving oversold (crossing up through 30: LONG) or overbought (down through
    70: SHORT). Confidence 0.6 plus how deep it went in the last 12 bars (up to 0.3)."""
    r = rsi(c.close)
    out = []
    for i in range(60, len(c)):
        window = r[i - 12:i]
        if r[i - 1] < low <= r[i]:
            depth = (low - float(window.min())) / low
            out.append(Alert(i, symbol, "LONG", round(min(0.9, 0.6 + depth), 3),
                             "rsi_reversal"))
        elif r[i - 1] > high >= r[i]:
            depth = (float(window.max()) - high) / (100 - high)
            out.append(Alert(i, symbol, "SHORT", round(min(0.9, 0.6 + depth), 3),
                             "rsi_reversal"))
    return out


STRATEGIES = {"ema_cross": ema_cross_alerts, "rsi_reversal": rsi_reversal_alerts}


class ReplayMarket:
    """MarketView over the replayed candles at the current bar (closed candles only)."""

    def __init__(self, candles: dict[str, Candles], account: Account) -> None:
        self.candles = candles
        self.hours = {s: c.resample(SLOW_MS) for s, c in candles.items()}
        self.hour_close = {s: h.open_time + SLOW_MS for s, h in self.hours.items()}
        self.account = account
        self.bar = 0

    def klines(self, symbol: str, timeframe: str, limit: int) -> Sequence[Sequence[float]]:
        c = self.candles[symbol]
        if timeframe == "1h":
            now = c.open_time[self.bar] + FAST_MS
            end = int(np.searchsorted(self.hour_close[symbol], now, side="right"))
            c, hi = self.hours[symbol], end
        else:
            hi = self.bar + 1
        lo = max(0, hi - limit)
        return np.stack([c.open_time[lo:hi], c.open[lo:hi], c.high[lo:hi], c.low[lo:hi],
                         c.close[lo:hi], c.volume[lo:hi]], axis=1).tolist()

    def last_price(self, symbol: str) -> Decimal:
        return Decimal(repr(float(self.candles[symbol].close[self.bar])))

    def equity(self) -> Decimal:
        return self.account.equity

    def tick_size(self, symbol: str) -> Decimal:
        return Decimal(FILTERS[symbol][0])

    def min_quantity(self, symbol: str) -> Decimal:
        return Decimal(FILTERS[symbol][2])

    def min_notional(self, symbol: str) -> Decimal:
        return Decimal(FILTERS[symbol][3])

    def amount_to_precision(self, symbol: str, quantity: Decimal) -> Decimal:
        step = Decimal(FILTERS[symbol][1])
        return (quantity / step).to_integral_value(rounding=ROUND_DOWN) * step


class MemoBrain(BrainEngine):
    """The real BrainEngine; its market features (a pure function of the candles up to the
    bar) are computed once per (symbol, bar, side) and shared by the variants, so that
    replaying a year stays within minutes. The track record is read fresh every time."""

    cache: dict[tuple[str, int, str], dict[str, float]] = {}

    def features(self, signal: Signal) -> dict[str, float]:
        assert isinstance(self.market, ReplayMarket) and signal.side is not None
        key = (signal.symbol, self.market.bar, signal.side)
        if key not in self.cache:
            feats = super().features(signal)
            self.cache[key] = {k: v for k, v in feats.items()
                               if k not in ("track_wins", "track_losses")}
        record = self.track.get(signal.strategy, signal.symbol, signal.side)
        return {**self.cache[key], "track_wins": float(record.wins),
                "track_losses": float(record.losses)}


@dataclass
class Trade:
    symbol: str
    side: str
    strategy: str
    entry_bar: int
    entry_time: float
    entry: float
    quantity: float
    margin: float
    stop: float
    take: float
    liquidation: float
    confidence: float
    p: float
    exit_bar: int = -1
    exit_time: float = 0.0
    exit: float = 0.0
    reason: str = ""
    pnl: float = 0.0  # net of both fees
    fees: float = 0.0


@dataclass
class Account:
    wallet: Decimal
    open: list[Trade] = field(default_factory=list)
    closed: list[Trade] = field(default_factory=list)
    peak: Decimal = Decimal(0)
    day: int = -1
    day_start: Decimal = Decimal(0)  # the wallet (realised) at the day's start, as risk's ledger
    halted_at: float | None = None  # risk halts on a breach until an operator resumes

    @property
    def equity(self) -> Decimal:
        return self.wallet  # marked to market by the replay before each decision


class Track:
    """Closed trades' wins and losses per strategy, symbol and side (as risk records)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], list[int]] = {}

    def get(self, strategy: str, symbol: str, side: str) -> TrackRecord:
        w, n = self.counts.get((strategy, symbol, side), [0, 0])
        return TrackRecord(w, n)

    def book(self, event_id: str, trade: ClosedTrade) -> bool:
        return False  # the replay books its own closes (add)

    def add(self, t: Trade) -> None:
        rec = self.counts.setdefault((t.strategy, t.symbol, t.side), [0, 0])
        rec[0 if t.pnl > 0 else 1] += 1


def resolve_exit(t: Trade, c: Candles) -> None:
    """Walk the bars after the entry until the bracket or the liquidation price fills."""
    side = 1 if t.side == "LONG" else -1
    start = t.entry_bar + 1
    n = len(c)
    while start < n:
        end = min(n, start + 2016)
        if side > 0:
            sl_hit, tp_hit = c.low[start:end] <= t.stop, c.high[start:end] >= t.take
        else:
            sl_hit, tp_hit = c.high[start:end] >= t.stop, c.low[start:end] <= t.take
        either = sl_hit | tp_hit
        if either.any():
            j = start + int(np.argmax(either))
            if sl_hit[j - start]:
                opened = float(c.open[j])
                gapped = (opened - t.stop) * side < 0
                if gapped and (opened - t.liquidation) * side <= 0:
                    t.exit, t.reason = t.liquidation, "liquidation"
                else:
                    t.exit, t.reason = (opened if gapped else t.stop), "stop_loss"
            else:
                t.exit, t.reason = t.take, "take_profit"
            t.exit_bar = j
            break
        start = end
    else:
        t.exit_bar, t.exit, t.reason = n - 1, float(c.close[-1]), "end_of_data"
    t.exit_time = float(c.open_time[t.exit_bar]) + FAST_MS


def _settle(t: Trade, fee: float) -> None:
    side = 1 if t.side == "LONG" else -1
    gross = side * (t.exit - t.entry) * t.quantity
    if t.reason == "liquidation":
        gross = -t.margin  # isolated: the position's margin is lost
    t.fees = fee * t.quantity * (t.entry + t.exit)
    t.pnl = gross - t.fees


@dataclass
class RunResult:
    trades: list[Trade]
    alerts: int
    brain_approved: int
    risk_approved: int
    reasons: dict[str, int]
    equity_time: Array
    equity: Array
    exposure: Array  # open notional / equity at each sample
    halted_at: float | None = None


def run(candles: dict[str, Candles], alerts: list[Alert], settings: Settings,
        model: PhoenixModel, fee: float, initial: float, sample_ms: int = SLOW_MS
        ) -> RunResult:
    """Replay ``alerts`` (any order) against ``candles`` sharing one 5m time grid per symbol."""
    account = Account(Decimal(str(initial)))
    account.peak = account.day_start = account.wallet
    market = ReplayMarket(candles, account)
    track = Track()
    brain = MemoBrain(settings, market, model, track)
    risk = RiskEngine(settings)
    reasons: dict[str, int] = {}
    brain_ok = risk_ok = 0
    ordered = sorted(alerts, key=lambda a: (float(candles[a.symbol].open_time[a.bar]), a.symbol))
    for a in ordered:
        c = candles[a.symbol]
        now = float(c.open_time[a.bar]) + FAST_MS
        _close_until(account, track, now, fee)
        market.bar = a.bar
        price = float(c.close[a.bar])
        mtm = account.wallet + Decimal(str(_unrealised(account, candles, now)))
        day = int(now // 86_400_000)
        if day != account.day:
            account.day, account.day_start = day, account.wallet
        account.peak = max(account.peak, mtm)
        brain.clock = _clock(now / 1000 + 1)
        real_wallet, account.wallet = account.wallet, mtm  # the brain sizes on equity
        signal = Signal(signal_id=uuid.uuid4().hex, idempotency_key=uuid.uuid4().hex,
                        symbol=a.symbol, action="long" if a.side == "LONG" else "short",
                        side="LONG" if a.side == "LONG" else "SHORT",
                        price=Decimal(repr(price)), confidence=a.confidence,
                        strategy=a.strategy, received_at=datetime.fromtimestamp(now / 1000, UTC))
        decision = brain.analyze(signal)
        account.wallet = real_wallet
        if not decision.approved or decision.intent is None:
            for r in decision.analysis.reasons:
                reasons[r] = reasons.get(r, 0) + 1
            continue
        brain_ok += 1
        intent = decision.intent
        used = sum((Decimal(str(t.margin)) for t in account.open), Decimal(0))
        realised_loss = max(Decimal(0), account.day_start - account.wallet)
        snap = Snapshot(
            state="ACTIVE" if account.halted_at is None else "HALTED", equity=mtm,
            available=account.wallet - used,
            positions=[OpenPosition(t.symbol, t.side, Decimal(str(t.margin)),
                                    Decimal(str(t.quantity * t.entry))) for t in account.open],
            last_price=intent.reference_price, price_age_ms=0,
            min_quantity=market.min_quantity(a.symbol),
            min_notional=market.min_notional(a.symbol),
            brackets=DEFAULT_BRACKETS[a.symbol],
            daily_loss_ratio=(realised_loss / account.day_start) if account.day_start > 0
            else Decimal(0),
            drawdown=(account.peak - mtm) / account.peak if account.peak > 0 else Decimal(0),
        )
        verdict = risk.check(intent, snap)
        if breaches(verdict.reasons) and account.halted_at is None:
            account.halted_at = now
        if not verdict.approved:
            for r in verdict.reasons:
                reasons["risk:" + r] = reasons.get("risk:" + r, 0) + 1
            continue
        risk_ok += 1
        assert intent.stop_loss is not None and intent.take_profit is not None
        qty = float(intent.quantity)
        liq = liquidation_price(intent.side, intent.reference_price, intent.quantity,
                                intent.leverage, DEFAULT_BRACKETS[a.symbol])
        t = Trade(a.symbol, a.side, a.strategy, a.bar, now, price, qty,
                  qty * price / intent.leverage, float(intent.stop_loss),
                  float(intent.take_profit), float(liq), a.confidence,
                  decision.analysis.model_probability)
        resolve_exit(t, c)
        _settle(t, fee)
        account.open.append(t)
    _close_until(account, track, float("inf"), fee)
    times, equity, exposure = _curve(account.closed, candles, initial, sample_ms)
    return RunResult(account.closed, len(alerts), brain_ok, risk_ok, reasons, times, equity,
                     exposure, account.halted_at)


def _clock(at: float) -> Callable[[], float]:
    return lambda: at


def _close_until(account: Account, track: Track, now: float, fee: float) -> None:
    due = sorted((t for t in account.open if t.exit_time <= now), key=lambda t: t.exit_time)
    for t in due:
        account.open.remove(t)
        account.wallet += Decimal(str(t.pnl))
        account.closed.append(t)
        track.add(t)


def _unrealised(account: Account, candles: dict[str, Candles], now: float) -> float:
    total = 0.0
    for t in account.open:
        c = candles[t.symbol]
        i = int(np.searchsorted(c.open_time + FAST_MS, now, side="right")) - 1
        side = 1 if t.side == "LONG" else -1
        total += side * (float(c.close[max(i, 0)]) - t.entry) * t.quantity
    return total


def _curve(trades: list[Trade], candles: dict[str, Candles], initial: float, sample_ms: int
           ) -> tuple[Array, Array, Array]:
    """Equity (wallet + open positions marked at the close) and exposure, sampled."""
    start = min(float(c.open_time[0]) for c in candles.values())
    end = max(float(c.open_time[-1]) for c in candles.values()) + FAST_MS
    grid = np.arange(start, end + sample_ms, sample_ms)
    equity = np.full(len(grid), initial)
    notional = np.zeros(len(grid))
    for t in trades:
        c = candles[t.symbol]
        side = 1 if t.side == "LONG" else -1
        open_idx = np.flatnonzero((grid >= t.entry_time) & (grid < t.exit_time))
        if len(open_idx):
            bar = np.searchsorted(c.open_time + FAST_MS, grid[open_idx], side="right") - 1
            equity[open_idx] += side * (c.close[np.maximum(bar, 0)] - t.entry) * t.quantity
            notional[open_idx] += t.quantity * t.entry
        equity[grid >= t.exit_time] += t.pnl
    return grid, equity, notional / np.maximum(equity, 1e-9)


def summary(r: RunResult, initial: float) -> dict[str, Any]:
    pnl = np.asarray([t.pnl for t in r.trades])
    peak = np.maximum.accumulate(r.equity)
    dd = float(np.max((peak - r.equity) / peak)) if len(r.equity) else 0.0
    exits: dict[str, int] = {}
    for t in r.trades:
        exits[t.reason] = exits.get(t.reason, 0) + 1
    return {
        "alerts": r.alerts, "brain_approved": r.brain_approved, "trades": len(r.trades),
        "win_rate": float((pnl > 0).mean()) if len(pnl) else None,
        "pnl_net": float(pnl.sum()), "fees": float(sum(t.fees for t in r.trades)),
        "return_pct": float(100 * pnl.sum() / initial),
        "final_equity": float(r.equity[-1]) if len(r.equity) else initial,
        "max_drawdown_pct": 100 * dd,
        "time_in_market_pct": float(100 * (r.exposure > 0).mean()),
        "mean_exposure": float(r.exposure.mean()), "max_exposure": float(r.exposure.max()),
        "exits": exits,
        "halted_at": None if r.halted_at is None else datetime.fromtimestamp(
            r.halted_at / 1000, UTC).strftime("%Y-%m-%d %H:%M"),
        "top_rejections": dict(sorted(r.reasons.items(), key=lambda kv: -kv[1])[:6]),
    }
