"""What a trade costs the exchange, and how fast it is protected (issue: market data plane).

Run by hand against a running system (``scripts/up``, same environment) whose exchange is
the paper exchange (paper mode, or live/demo mode pointed at it with
``exchange.rest_url`` / ``exchange.ws_url``), so its request counter can be read:

    .venv/bin/python -m benchmarks.exchange_cost --n 30 --idle 60

Reports, from the paper exchange's own ``paper_exchange_requests_total`` (GET /metrics):

* REST requests per warm alert (a first alert warms the symbol; the rest are counted
  between the webhook and the moment both brackets are armed);
* REST requests per minute while idle (``--idle`` seconds without alerts);
* webhook -> stop-loss and take-profit armed: until the user-data stream's ALGO_UPDATE NEW of
  both legs is on ``trade:stream`` (written by the feed, stamped when stored);
* market tick -> ``market:stream`` -> risk's live watch, from risk's
  ``phoenix95_market_tick_latency_seconds`` histogram.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import urllib.request
from typing import Any

import redis

from benchmarks.webhook_pipeline import alert, percentiles, post_alert
from shared.exchange import rest_origin
from shared.names import REC_EXCHANGE_ORDER, TRADE_STREAM
from shared.records import Record
from shared.settings import Settings, get_settings

BRACKETS = ("STOP_MARKET", "TAKE_PROFIT_MARKET")


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def requests_total(settings: Settings) -> dict[str, float]:
    """``method path -> count`` of REST requests the paper exchange has answered."""
    origin = rest_origin(settings) or settings.paper_exchange.base_url
    out: dict[str, float] = {}
    pattern = re.compile(r'^paper_exchange_requests_total\{([^}]*)\}\s+([0-9.e+]+)$')
    for line in scrape(origin + "/metrics").splitlines():
        m = pattern.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            if labels.get("path") != "/metrics":  # our own scrape is not a trade's cost
                out[f"{labels.get('method')} {labels.get('path')}"] = float(m.group(2))
    return out


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    keys = set(before) | set(after)
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(keys)
            if after.get(k, 0) != before.get(k, 0)}


def wait_armed(r: Any, symbol: str, since_id: str, sent_ms: float,
               timeout: float = 10.0) -> float | None:
    """ms from the webhook until both legs' ALGO_UPDATE NEW are stored by the feed."""
    deadline = time.monotonic() + timeout
    last, seen = since_id, {}
    while time.monotonic() < deadline:
        for entry_id, fields in r.xrange(TRADE_STREAM, min=f"({last}", count=500):
            last = entry_id
            rec = Record.from_stream_fields(fields)
            if rec.type != REC_EXCHANGE_ORDER or rec.data.get("event") != "ALGO_UPDATE":
                continue
            order = rec.data.get("order") or {}
            if order.get("symbol") == symbol and order.get("status") == "NEW" \
                    and order.get("type") in BRACKETS:
                seen[order["type"]] = rec.ts
            if len(seen) == len(BRACKETS):
                return max(seen.values()) - sent_ms
        time.sleep(0.002)
    return None


def close_and_settle(rpc: Any, symbol: str) -> None:
    rpc.execute.close(symbol)
    time.sleep(0.3)  # let the close's own events pass before the next count starts


def alerts(settings: Settings, n: int, symbol: str) -> dict[str, Any]:
    from shared.signed_rpc import cluster_proxy

    r: Any = redis.Redis.from_url(settings.redis_streams.url, decode_responses=True)
    url = settings.services.url_of("brain") + "/webhook"
    armed: list[float] = []
    per_alert: list[float] = []
    paths: dict[str, float] = {}
    failures = 0
    with cluster_proxy(settings.message_queue.amqp_uri, timeout=30) as rpc:
        rpc.execute.close_all()
        for i in range(n + 1):  # the first alert warms the symbol (pre-flight, caches)
            last = r.xrevrange(TRADE_STREAM, count=1)
            since = last[0][0] if last else "0-0"
            before = requests_total(settings)
            status, _payload, _ms, sent = post_alert(url, alert(settings, symbol, 0.8))
            took = wait_armed(r, symbol, since, sent * 1000) if status == 202 else None
            after = requests_total(settings)
            if took is None:
                failures += 1
            elif i > 0:
                armed.append(took)
                d = delta(before, after)
                per_alert.append(sum(d.values()))
                for k, v in d.items():
                    paths[k] = paths.get(k, 0) + v
            close_and_settle(rpc, symbol)
    return {"alerts": n, "failures": failures,
            "webhook_to_sl_tp_armed_ms": percentiles(armed),
            "rest_requests_per_warm_alert": percentiles(per_alert),
            "rest_requests_by_path_per_alert": {k: round(v / max(1, len(per_alert)), 2)
                                                for k, v in paths.items()}}


def idle(settings: Settings, seconds: float) -> dict[str, Any]:
    before = requests_total(settings)
    time.sleep(seconds)
    d = delta(before, requests_total(settings))
    total = sum(d.values())
    return {"idle_seconds": seconds, "rest_requests": total,
            "rest_requests_per_minute": round(total * 60 / seconds, 2), "by_path": d}


def tick_buckets(settings: Settings) -> list[tuple[float, float]]:
    """Risk's cumulative histogram of tick event time -> live watch, as (le, count)."""
    text = scrape(settings.services.url_of("risk") + "/metrics")
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        m = re.match(r'^phoenix95_market_tick_latency_seconds_bucket\{le="([^"]+)"\}\s+(\S+)$',
                     line)
        if m:
            buckets.append((float(m.group(1)), float(m.group(2))))
    return buckets


def tick_latency(before: list[tuple[float, float]],
                 after: list[tuple[float, float]]) -> dict[str, Any]:
    """p50/p99 upper bounds of the ticks observed between the two scrapes (so a backlog
    consumed at start-up is not counted)."""
    base = dict(before)
    buckets = [(le, count - base.get(le, 0.0)) for le, count in after]
    if not buckets or buckets[-1][1] == 0:
        return {"ticks": 0}
    total = buckets[-1][1]

    def upper(q: float) -> float:
        return next(le for le, count in buckets if count >= q * total) * 1000

    return {"ticks": int(total), "p50_ms_at_most": upper(0.5), "p99_ms_at_most": upper(0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=30, help="warm alerts to measure")
    parser.add_argument("--idle", type=float, default=60.0, help="idle seconds to count")
    parser.add_argument("--symbol", default="BTCUSDT")
    args = parser.parse_args()
    settings = get_settings()
    result: dict[str, Any] = {"mode": settings.exchange.mode,
                              "latency_ms": settings.paper_exchange.latency_ms}
    ticks_before = tick_buckets(settings)
    if args.idle > 0:
        result["idle"] = idle(settings, args.idle)
    if args.n > 0:
        result.update(alerts(settings, args.n, args.symbol))
    result["tick_to_risk_watch"] = tick_latency(ticks_before, tick_buckets(settings))
    print(json.dumps(result, indent=2, default=lambda v: round(v, 2)))


if __name__ == "__main__":
    main()
