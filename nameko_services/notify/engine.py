"""Notify's plain logic: which alerts go out (verbosity), health transitions,
the daily summary, the stale-state alert and the lag/health/state-age gauges. No Nameko
here; the service wires it."""

from __future__ import annotations

import datetime as dtm
import math
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import redis
from prometheus_client import Counter, Gauge

from nameko_services.notify.commands import fmt_money, pnl_summary
from shared.lag import Lag
from shared.names import NOTIFY_STALE_PREFIX
from shared.state import ACCOUNT_STALE, MARKET_STALE

# verbosity -> event kinds sent (every other kind is always sent)
OPTIONAL_KINDS: Final = {
    "quiet": frozenset(),
    "normal": frozenset({"signal_rejected"}),
    "verbose": frozenset({"signal_rejected", "signal_accepted"}),
}
FILTERED_KINDS: Final = frozenset({"signal_rejected", "signal_accepted"})

CONSUMER_LAG = Gauge(
    "phoenix95_consumer_lag_messages",
    "Messages not yet delivered to a consumer group (RabbitMQ ready messages, Redis "
    "stream group lag, Kafka committed-offset lag)", ["source", "group"])
CONSUMER_PENDING = Gauge(
    "phoenix95_consumer_pending_messages",
    "Redis stream entries delivered to a group but not yet acknowledged", ["source", "group"])
QUEUE_CONSUMERS = Gauge("phoenix95_queue_consumers", "Consumers attached to a RabbitMQ queue",
                        ["queue"])
LAG_PROBE_ERRORS = Counter("phoenix95_lag_probe_errors_total",
                           "Lag probes that could not read a source", ["broker"])
COMPONENT_UP = Gauge("phoenix95_component_up",
                     "1 while a service or broker answers its health check", ["component"])
ALERTS_SUPPRESSED = Counter("phoenix95_alerts_suppressed_total",
                            "Alerts not sent (verbosity or duplicate)", ["reason"])


class AlertPolicy:
    """Verbosity filter: which optional event kinds are sent. (Duplicates are dropped by
    the Redis latch in :mod:`nameko_services.notify.alerts`, shared by every instance.)"""

    def __init__(self, verbosity: str = "normal") -> None:
        if verbosity not in OPTIONAL_KINDS:
            raise ValueError(f"verbosity must be one of {sorted(OPTIONAL_KINDS)}")
        self.verbosity = verbosity

    def wants(self, kind: str) -> bool:
        ok = kind not in FILTERED_KINDS or kind in OPTIONAL_KINDS[self.verbosity]
        if not ok:
            ALERTS_SUPPRESSED.labels("verbosity").inc()
        return ok


# --------------------------------------------------------------------------- health


@dataclass(frozen=True)
class Transition:
    component: str
    up: bool
    detail: str

    def text(self) -> str:
        if self.up:
            return f"{self.component} is back up"
        return f"{self.component} is DOWN: {self.detail}"


class HealthWatch:
    """Turns periodic health observations into down/up transitions.

    A component is declared down after ``failures`` consecutive failed checks (one
    dropped request is not an outage) and up again on the first success after that.
    A component seen down before it was ever seen up is reported once, too.
    """

    def __init__(self, failures: int = 2) -> None:
        self.failures = failures
        self._misses: dict[str, int] = {}
        self._down: dict[str, bool] = {}

    def observe(self, component: str, ok: bool, detail: str = "") -> Transition | None:
        COMPONENT_UP.labels(component).set(1 if ok else 0)
        if ok:
            self._misses[component] = 0
            if self._down.get(component):
                self._down[component] = False
                return Transition(component, True, detail)
            self._down.setdefault(component, False)
            return None
        misses = self._misses.get(component, 0) + 1
        self._misses[component] = misses
        if misses >= self.failures and not self._down.get(component):
            self._down[component] = True
            return Transition(component, False, detail)
        return None

    def down(self) -> list[str]:
        return sorted(c for c, d in self._down.items() if d)


def http_health(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300, f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return False, str(getattr(exc, "reason", exc))


def broker_health(lags: Iterable[Lag]) -> dict[str, tuple[bool, str]]:
    """A broker is up if at least one of its lag probes answered."""
    result: dict[str, tuple[bool, str]] = {}
    for lag in lags:
        ok, detail = result.get(lag.broker, (False, ""))
        if lag.error is None:
            result[lag.broker] = (True, "")
        elif not ok:
            result[lag.broker] = (False, lag.error)
    return result


# --------------------------------------------------------------------------- lag gauges


class LagGauges:
    """Publishes the latest lag rows; series that vanished or errored are removed."""

    def __init__(self) -> None:
        self._series: set[tuple[str, str]] = set()
        self._queues: set[str] = set()

    def publish(self, lags: Iterable[Lag]) -> None:
        series: set[tuple[str, str]] = set()
        queues: set[str] = set()
        for lag in lags:
            if lag.error is not None or lag.messages is None:
                if lag.error is not None:
                    LAG_PROBE_ERRORS.labels(lag.broker).inc()
                continue
            series.add((lag.source, lag.group))
            CONSUMER_LAG.labels(lag.source, lag.group).set(lag.messages)
            if lag.pending is not None:
                CONSUMER_PENDING.labels(lag.source, lag.group).set(lag.pending)
            if lag.broker == "rabbitmq" and lag.consumers is not None:
                queues.add(lag.source)
                QUEUE_CONSUMERS.labels(lag.source).set(lag.consumers)
        for gone in self._series - series:
            for gauge in (CONSUMER_LAG, CONSUMER_PENDING):
                try:
                    gauge.remove(*gone)
                except KeyError:
                    pass
        for gone_queue in self._queues - queues:
            try:
                QUEUE_CONSUMERS.remove(gone_queue)
            except KeyError:
                pass
        self._series, self._queues = series, queues


# --------------------------------------------------------------------------- daily summary


def summary_due(now: dtm.datetime, hour: int) -> bool:
    return hour >= 0 and now.hour == hour


def format_daily_summary(day: dtm.date, status: Mapping[str, Any] | None,
                         trades: list[dict[str, Any]], positions: list[dict[str, Any]],
                         errors: Iterable[str] = ()) -> str:
    s = pnl_summary(trades, positions, day, (status or {}).get("daily_pnl"))
    lines = [f"DAILY SUMMARY {day.isoformat()} (UTC)",
             f"Closed today: {s['closed_today']} ({s['wins']} won, {s['losses']} lost), "
             f"realised {fmt_money(s['realized_today'])} USDT (net of fees)",
             f"Open now: {len(positions)}, unrealised {fmt_money(s['unrealized'])} USDT"]
    if status:
        equity = status.get("equity")
        lines.append(f"Equity {fmt_money(equity)} USDT · state {status.get('state', '?')}")
        usage = status.get("margin_usage")
        if usage not in (None, ""):
            lines.append(f"Margin usage {Decimal(str(usage)) * 100:.1f}%")
    lines += [f"(unavailable: {e})" for e in errors]
    return "\n".join(lines)


# --------------------------------------------------------------------------- stale state

STATE_AGE = Gauge("phoenix95_state_age_seconds",
                  "Age of the feed's state: market = the oldest price of the traded symbols, "
                  "account = the user-data heartbeat (+Inf: never written)", ["kind"])


@dataclass(frozen=True)
class StateAlert:
    kind: str  # market | account
    level: str  # "warning" when it turns stale, "info" when it is fresh again
    code: str
    text: str


_WHAT = {"market": ("Market data", MARKET_STALE), "account": ("Account state", ACCOUNT_STALE)}


class StaleWatch:
    """One alert when the feed's market or account state turns stale, one when it is fresh
    again, however many notify instances watch: a Redis latch per kind decides which
    instance sends (``SET NX`` to raise, ``DEL`` to clear). A state is declared stale after
    ``confirm`` consecutive stale observations, so a start-up race is not an alert."""

    def __init__(self, client: redis.Redis, symbols: Iterable[str], max_age_ms: int,
                 prefix: str = NOTIFY_STALE_PREFIX, confirm: int = 2) -> None:
        self.redis = client
        self.symbols = tuple(symbols)
        self.max_age_ms = max_age_ms
        self.prefix = prefix
        self.confirm = confirm
        self._misses: dict[str, int] = {}

    def ages(self, freshness: Mapping[str, Any]) -> dict[str, int | None]:
        """Age in ms of each kind; None when it was never written."""
        prices: Mapping[str, int] = freshness.get("price_age_ms") or {}
        known = [prices[s] for s in self.symbols if s in prices]
        complete = bool(known) and len(known) == len(self.symbols)
        return {"market": max(known) if complete else None,
                "account": freshness.get("account_heartbeat_age_ms")}

    def observe(self, freshness: Mapping[str, Any]) -> list[StateAlert]:
        out = []
        for kind, age in self.ages(freshness).items():
            STATE_AGE.labels(kind).set(age / 1000 if age is not None else math.inf)
            what, code = _WHAT[kind]
            if age is not None and age <= self.max_age_ms:
                self._misses[kind] = 0
                if self.redis.delete(self.prefix + kind):
                    out.append(StateAlert(kind, "info", code, (
                        f"[{code}] {what} is fresh again ({age / 1000:.1f} s old); "
                        "new entries are allowed")))
                continue
            self._misses[kind] = self._misses.get(kind, 0) + 1
            if self._misses[kind] >= self.confirm and self.redis.set(
                    self.prefix + kind, str(int(time.time() * 1000)), nx=True):
                seen = "never written" if age is None else f"{age / 1000:.1f} s old"
                out.append(StateAlert(kind, "warning", code, (
                    f"[{code}] {what} is stale ({seen}, max {self.max_age_ms / 1000:g} s): "
                    "risk refuses new entries; closes and stops still work")))
        return out

    def undo(self, alert: StateAlert) -> None:
        """The alert could not be queued: put the latch back so the next check sends it."""
        if alert.level == "warning":
            self.redis.delete(self.prefix + alert.kind)
        else:
            self.redis.set(self.prefix + alert.kind, str(int(time.time() * 1000)))
