"""The invariants ``scripts/chaos`` checks after each fault, from the exchange and the records.

* lost: an accepted signal (brain answered 202) without a terminal outcome: traded
  (``entry_filled`` on trade:stream), rejected with reasons (``signal_scored`` with decision
  rejected on signal:stream, or ``risk_check`` not approved on risk:stream) or failed with a
  reason (``trade_failed``); two different outcomes for one signal are counted as ``multi``.
* duplicated: a client id the exchange accepted twice, a signal with more than one entry
  order, a second entry on a symbol without a close in between, an entry filled on the
  exchange for a signal whose outcome says it did not trade.
* unprotected: seconds from the fault's end until every open position has a stop-loss and a
  take-profit (reduce-only or close-position) open on the exchange; over 10 s is a failure.
* book: execute's open trades (symbol, side, quantity) equal the exchange's positions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from nameko_services.execute.engine import bracket_ids
from scripts.chaos_faults import Stack
from scripts.chaos_load import Sent
from shared.records import Record

PROTECT_LIMIT_S = 10.0
TRADED, DUPLICATE_REPLAY = "traded", "replayed"


@dataclass
class Verdict:
    accepted: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)  # not accepted: last HTTP status
    lost: list[str] = field(default_factory=list)
    multi: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unprotected_s: float = 0.0
    unprotected: list[str] = field(default_factory=list)
    book_diff: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # open algo orders with no position

    @property
    def ok(self) -> bool:
        return not (self.lost or self.multi or self.duplicated or self.unprotected
                    or self.book_diff or self.orphans)


def outcome_of(rec: Record) -> str | None:
    if rec.type == "entry_filled":
        return TRADED if rec.data.get("status") != "duplicate" else DUPLICATE_REPLAY
    if rec.type == "trade_failed":
        return f"failed:{rec.data.get('reason')}"
    if rec.type == "signal_scored" and rec.data.get("decision") == "rejected":
        return "rejected:brain:" + ",".join(str(r) for r in rec.data.get("reasons") or [])
    if rec.type == "risk_check" and not rec.data.get("approved"):
        return "rejected:risk:" + ",".join(str(r) for r in rec.data.get("reasons") or [])
    return None


def terminal(records: list[tuple[str, Record]]) -> list[str]:
    """The distinct outcomes (a redelivered message repeating one is not a second one)."""
    found = [outcome_of(r) for _, r in records]
    distinct = list(dict.fromkeys(o for o in found if o is not None and o != DUPLICATE_REPLAY))
    if not distinct and DUPLICATE_REPLAY in found:
        # "already executed" alone: the worker that traded it was killed before reporting,
        # reconciliation booked its filled entry under this signal, the redelivery said so
        return [TRADED]
    return distinct


def wait_outcomes(of: Callable[[set[str]], dict[str, list[tuple[str, Record]]]],
                  accepted: list[Sent], timeout: float) -> dict[str, list[str]]:
    ids = {s.signal_id for s in accepted if s.signal_id}
    deadline = time.monotonic() + timeout
    while True:
        found = {sid: terminal(recs) for sid, recs in of(ids).items()}
        if all(found.values()) or time.monotonic() > deadline:
            time.sleep(1.0)  # a second outcome, if any, would be written by now
            return {sid: terminal(recs) for sid, recs in of(ids).items()}
        time.sleep(0.3)


def exchange_view(stack: Stack) -> tuple[dict[str, Decimal], dict[str, list[dict[str, Any]]]]:
    """Open positions (signed amounts) and open algo orders by symbol, from the exchange."""
    state = stack.paper("GET", "/paper/state")
    positions = {p["symbol"]: Decimal(p["positionAmt"]) for p in state["positions"]
                 if Decimal(p["positionAmt"]) != 0}
    algos: dict[str, list[dict[str, Any]]] = {}
    for algo in state["openAlgoOrders"]:
        algos.setdefault(algo["symbol"], []).append(algo)
    return positions, algos


def protected(amount: Decimal, algos: list[dict[str, Any]]) -> bool:
    close_side = "SELL" if amount > 0 else "BUY"

    def covers(kind: str) -> bool:
        return any(a["orderType"] == kind and a["side"] == close_side
                   and (a["closePosition"] or (a["reduceOnly"]
                                               and Decimal(a["quantity"]) == abs(amount)))
                   for a in algos)

    return covers("STOP_MARKET") and covers("TAKE_PROFIT_MARKET")


def watch_protection(stack: Stack, fault_end: float, settled: Callable[[], bool],
                     verdict: Verdict) -> None:
    """Poll the exchange from the fault's end; a position's unprotected time counts from
    the later of the fault's end and the moment it is first seen."""
    first_seen: dict[str, float] = {}
    done: dict[str, float] = {}
    last: dict[str, Decimal] = {}
    while True:
        now = time.monotonic()
        positions, algos = exchange_view(stack)
        last = positions
        for symbol, amount in positions.items():
            first_seen.setdefault(symbol, max(fault_end, now))
            if symbol not in done and protected(amount, algos.get(symbol, [])):
                done[symbol] = now - first_seen[symbol]
        waiting = [s for s in positions if s not in done]
        if settled() and not waiting:
            break
        if waiting and now - min(first_seen[s] for s in waiting) > PROTECT_LIMIT_S + 5 \
                and settled():
            break
        time.sleep(0.25)
    for symbol in last:
        if symbol in done:
            verdict.unprotected_s = max(verdict.unprotected_s, done[symbol])
            if done[symbol] > PROTECT_LIMIT_S:
                verdict.unprotected.append(f"{symbol}: protected after {done[symbol]:.1f}s")
        else:
            waited = time.monotonic() - first_seen[symbol]
            verdict.unprotected_s = max(verdict.unprotected_s, waited)
            _, algos = exchange_view(stack)
            legs = [(a["orderType"], a["side"], a["quantity"]) for a in algos.get(symbol, [])]
            verdict.unprotected.append(f"{symbol}: position {last[symbol]} without SL+TP "
                                       f"after {waited:.1f}s (open algos: {legs})")


def sent_ids(s: Sent, strategy: str) -> dict[str, str]:
    """The client ids execute derives for an alert (scoped by strategy and symbol)."""
    return bracket_ids(f"{strategy}|{s.symbol}|id:{s.alert_id}")


def check_orders(stack: Stack, sent: list[Sent], outcomes: dict[str, list[str]],
                 verdict: Verdict, strategy: str) -> None:
    listed = stack.paper("GET", "/paper/orders")
    ids = [o["clientOrderId"] for o in listed["orders"]] + \
        [a["clientAlgoId"] for a in listed["algoOrders"]]
    seen: set[str] = set()
    for cid in ids:
        if cid in seen and not cid.startswith("paper_"):
            verdict.duplicated.append(f"client id {cid} accepted twice by the exchange")
        seen.add(cid)
    by_cid = {o["clientOrderId"]: o for o in listed["orders"]}
    entries: list[tuple[int, str, Sent]] = []
    for s in sent:
        if not s.signal_id:
            continue
        cids = sent_ids(s, strategy)
        entry = by_cid.get(cids["entry"])
        filled = entry is not None and Decimal(entry["executedQty"]) > 0
        traded = TRADED in outcomes.get(s.signal_id, [])
        flattened = by_cid.get(cids["emergency"])
        if filled and not traded and flattened is not None and \
                Decimal(flattened["executedQty"]) == Decimal(entry["executedQty"]):  # type: ignore[index]
            continue  # failed after the fill and closed at once by execute's emergency order
        if filled and not traded:
            verdict.duplicated.append(
                f"signal {s.signal_id} ({s.symbol}): entry {entry['clientOrderId']} "  # type: ignore[index]
                f"filled on the exchange but its outcome is {outcomes.get(s.signal_id)}")
        if entry is not None and filled:
            entries.append((int(entry["updateTime"] or entry["time"]), s.symbol, s))
    closes = sorted((int(o["updateTime"] or o["time"]), o["symbol"]) for o in listed["orders"]
                    if o["reduceOnly"] or o.get("closePosition"))
    last_entry: dict[str, int] = {}
    for at, symbol, s in sorted(entries, key=lambda e: e[0]):
        before = last_entry.get(symbol)
        if before is not None and not any(sym == symbol and before <= t <= at
                                          for t, sym in closes):
            verdict.duplicated.append(f"{symbol}: second entry (signal {s.signal_id}) while a "
                                      f"position was open")
        last_entry[symbol] = at


def check_book(stack: Stack, rpc: Any, verdict: Verdict, timeout: float = 20.0) -> None:
    """Execute's open trades equal the exchange's positions (waits for the feed to catch up)."""
    deadline = time.monotonic() + timeout
    while True:
        positions, _ = exchange_view(stack)
        exchange = {s: ("LONG" if a > 0 else "SHORT", abs(a)) for s, a in positions.items()}
        rows = [t for t in rpc.execute.trades(1000) if t["status"] == "open"]
        book: dict[str, tuple[str, Decimal]] = {}
        dupes = []
        for t in rows:
            if t["symbol"] in book:
                dupes.append(f"{t['symbol']}: two open trades in the book")
            book[t["symbol"]] = (t["side"], Decimal(t["quantity"]))
        diff = dupes + [f"{s}: exchange {exchange.get(s)} vs book {book.get(s)}"
                        for s in sorted(set(exchange) | set(book))
                        if exchange.get(s) != book.get(s)]
        if not diff or time.monotonic() > deadline:
            verdict.book_diff.extend(diff)
            return
        time.sleep(0.5)


def check_orphans(stack: Stack, verdict: Verdict, timeout: float = 10.0) -> None:
    """No stop-loss/take-profit left open on a symbol without a position: a stale
    reduce-only order would later close part of someone else's position."""
    deadline = time.monotonic() + timeout
    while True:
        positions, algos = exchange_view(stack)
        stale = {s: a for s, a in algos.items() if a and s not in positions}
        if not stale or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for symbol, orders in stale.items():
        for a in orders:
            verdict.orphans.append(
                f"{symbol}: {a['orderType']} {a['side']} {a['quantity']} @ {a['triggerPrice']} "
                f"({a['clientAlgoId']}) open without a position")
