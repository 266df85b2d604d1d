"""Fault injection against a running stack: ``python scripts/chaos.py`` (or ``scripts/chaos``).

For each scenario and run: flatten, start a burst of alerts over the five symbols, inject
the fault at a random moment of the burst (kill -9 of a service, the exchange failing 30 %
of requests for 20 s, AMQP connections closed, Kafka down for 30 s, a RabbitMQ app restart
and a Redis restart of the stack's private brokers; the last two restart the machine's shared
brokers only with ``--destructive``), then check the invariants (scripts/chaos_checks.py)
and print a table. Exits 1 if any invariant failed. The environment selects the stack
exactly as for ``scripts/status``.

    scripts/chaos [--runs N] [--scenarios a,b] [--size small|full] [--destructive]
                  [--json PATH] [--seed N]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts._bootstrap import ensure_venv

if __name__ == "__main__":
    ensure_venv(__file__)

import argparse
import json
import random
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from scripts.chaos_checks import (
    Verdict,
    check_book,
    check_orders,
    check_orphans,
    exchange_view,
    wait_outcomes,
    watch_protection,
)
from scripts.chaos_faults import (
    EXTRA,
    SCENARIOS,
    ChaosError,
    Stack,
    paper_reachable,
)
from scripts.chaos_load import Burst, Recorder
from shared.exchange import make_exchange, rest_origin
from shared.settings import settings_or_exit

SIZES = {"small": {"alerts": 10, "seconds": 4.0, "fault": 0.25},
         "full": {"alerts": 25, "seconds": 10.0, "fault": 1.0}}
OUTCOME_TIMEOUT_S = 60.0  # retries are 3 x 5 s; an outcome later than this is lost
LOW_WALLET = 6000.0
DEFAULT_SCENARIOS = [s for s in SCENARIOS if s not in EXTRA]  # less those on shared brokers


@dataclass
class RunResult:
    scenario: str
    run: int
    ok: bool
    seconds: float
    verdict: Verdict
    error: str | None = None
    risk_state: str = ""


def flatten(stack: Stack, rpc: Any, timeout: float = 120.0) -> None:
    """No position and no open algo order on the exchange, risk ACTIVE (retried while a
    service restarts or its exchange circuit breaker is still open after the last fault)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            stack.paper("DELETE", "/paper/faults")
            if rpc.risk.status().get("state") != "ACTIVE":
                rpc.risk.set_state("ACTIVE", "chaos: next run")
            positions, algos = exchange_view(stack)
            if not positions and not any(algos.values()):
                wallet = stack.paper("GET", "/paper/state")["account"]["totalWalletBalance"]
                if float(wallet) < LOW_WALLET:  # fees and spread of many runs add up
                    stack.paper("POST", "/paper/reset")
                return
            if positions:
                rpc.execute.close_all()
            else:  # orphan legs (already reported by the run that left them)
                cancel_algos(stack, algos)
            problem = f"positions {positions}, algos { {s: len(a) for s, a in algos.items()} }"
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            problem = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise ChaosError(f"could not flatten: {problem}")
        time.sleep(2.0)


def cancel_algos(stack: Stack, algos: dict[str, list[dict[str, Any]]]) -> None:
    client = make_exchange(stack.settings)
    for symbol, orders in algos.items():
        for a in orders:
            client.fapiPrivateDeleteAlgoOrder({"algoId": a["algoId"]})
            print(f"  cancelled orphan {symbol} {a['orderType']} {a['clientAlgoId']}")


def run_once(stack: Stack, rpc: Any, scenario: str, run: int, size: str,
             rng: random.Random) -> RunResult:
    spec = SIZES[size]
    started = time.monotonic()
    verdict = Verdict()
    flatten(stack, rpc)
    recorder = Recorder(stack.settings.redis_streams.url)
    recorder.start()
    burst = Burst(stack.settings, list(stack.settings.trading.allowed_symbols),
                  int(spec["alerts"]), spec["seconds"], rng)
    try:
        burst.start()
        time.sleep(rng.uniform(0.1, 0.7) * spec["seconds"])  # a random moment of the burst
        fault_end = SCENARIOS[scenario](stack, rng, spec["fault"])
        settled = threading.Event()
        watcher = threading.Thread(target=watch_protection,
                                   args=(stack, fault_end, settled.is_set, verdict),
                                   daemon=True)
        watcher.start()
        burst.join()
        accepted = burst.accepted()
        verdict.accepted = len(accepted)
        for s in burst.sent:
            if not s.signal_id:
                last = s.http[-1] if s.http else "unsent"
                verdict.refused[last] = verdict.refused.get(last, 0) + 1
        outcomes = wait_outcomes(recorder.of, accepted, OUTCOME_TIMEOUT_S)
        settled.set()
        watcher.join()
        for s in accepted:
            found = outcomes.get(s.signal_id or "", [])
            for o in set(found):
                kind = o.split(":")[0]
                verdict.outcomes[kind] = verdict.outcomes.get(kind, 0) + 1
            if not found:
                verdict.lost.append(f"signal {s.signal_id} ({s.symbol} {s.side} conf "
                                    f"{s.confidence}, alert {s.alert_id}): no outcome")
            elif len(found) > 1:
                verdict.multi.append(f"signal {s.signal_id} ({s.symbol}): {found}")
        check_orders(stack, burst.sent, outcomes, verdict, burst.strategy)
        check_book(stack, rpc, verdict)
        check_orphans(stack, verdict)
        risk_state = str(rpc.risk.status().get("state"))
        return RunResult(scenario, run, verdict.ok, time.monotonic() - started, verdict,
                         risk_state=risk_state)
    finally:
        recorder.stop()


def print_table(results: list[RunResult]) -> None:
    header = (f"{'scenario':<20}{'runs':>5}{'passed':>8}{'accepted':>10}{'lost':>6}"
              f"{'multi':>7}{'dup':>5}{'book':>6}{'unprot>10s':>12}{'max unprot s':>14}")
    print(header)
    print("-" * len(header))
    for scenario in dict.fromkeys(r.scenario for r in results):
        rows = [r for r in results if r.scenario == scenario]
        v = [r.verdict for r in rows]
        print(f"{scenario:<20}{len(rows):>5}{sum(r.ok for r in rows):>8}"
              f"{sum(x.accepted for x in v):>10}{sum(len(x.lost) for x in v):>6}"
              f"{sum(len(x.multi) for x in v):>7}{sum(len(x.duplicated) for x in v):>5}"
              f"{sum(len(x.book_diff) for x in v):>6}{sum(len(x.unprotected) for x in v):>12}"
              f"{max(x.unprotected_s for x in v):>14.1f}{sum(len(x.orphans) for x in v):>9}")
    for r in results:
        if not r.ok:
            print(f"\nFAILED {r.scenario} run {r.run}: {r.error or ''}")
            for line in [*r.verdict.lost, *r.verdict.multi, *r.verdict.duplicated,
                         *r.verdict.unprotected, *r.verdict.book_diff, *r.verdict.orphans]:
                print(f"  - {line}")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The docs/reliability.md table from result files' rows (scenario x runs)."""
    lines = ["| scenario | runs | passed | accepted signals | lost | multi-outcome | duplicated "
             "| book != exchange | unprotected > 10 s | max unprotected s | orphan SL/TP |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        rs = [r for r in rows if r["scenario"] == scenario]
        v = [r["verdict"] for r in rs]
        lines.append(
            f"| {scenario} | {len(rs)} | {sum(bool(r['ok']) for r in rs)} "
            f"| {sum(x['accepted'] for x in v)} | {sum(len(x['lost']) for x in v)} "
            f"| {sum(len(x['multi']) for x in v)} | {sum(len(x['duplicated']) for x in v)} "
            f"| {sum(len(x['book_diff']) for x in v)} | {sum(len(x['unprotected']) for x in v)} "
            f"| {max(x['unprotected_s'] for x in v):.1f} "
            f"| {sum(len(x.get('orphans', [])) for x in v)} |")
    return "\n".join(lines)


def choose_scenarios(stack: Stack, asked: str | None, destructive: bool) -> list[str] | None:
    """The scenarios to run; None (after saying why) when one is unknown or would restart a
    broker shared with the rest of the machine without --destructive."""
    if asked is None:  # the default: skip what would hit shared brokers, and say so
        skipped = [] if destructive else stack.shared_brokers(DEFAULT_SCENARIOS)
        if skipped:
            print(f"skipping {', '.join(skipped)}: {SHARED_HINT}")
        return [s for s in DEFAULT_SCENARIOS if s not in skipped]
    scenarios = [s.strip() for s in asked.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        print(f"unknown scenarios: {unknown}; known: {', '.join(SCENARIOS)}")
        return None
    refused = [] if destructive else stack.shared_brokers(scenarios)
    if refused:
        print(f"refusing {', '.join(refused)}: {SHARED_HINT}")
        return None
    return scenarios


SHARED_HINT = ("the stack uses the machine's broker, which other stacks share; point it at a "
               "free local port (e.g. PHOENIX__REDIS_STREAMS__URL=redis://127.0.0.1:27379/0, "
               "PHOENIX__MESSAGE_QUEUE__PORT=27672) so that scripts/up starts a private one, "
               "or pass --destructive to restart the machine's")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--scenarios", default=None,
                    help=f"comma list of {', '.join(SCENARIOS)} (default: all but "
                         f"{', '.join(sorted(EXTRA))}, and the broker restarts only where "
                         "the stack's broker is private)")
    ap.add_argument("--size", choices=tuple(SIZES), default="full")
    ap.add_argument("--destructive", action="store_true",
                    help="allow rabbit-restart and redis-restart on brokers the stack shares "
                         "with the machine (not needed for the private ones up starts)")
    ap.add_argument("--json", type=Path, default=None, help="result file (default in run dir)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--stop-on-failure", action="store_true")
    ap.add_argument("--markdown", nargs="+", type=Path, metavar="RESULT_JSON",
                    help="print the markdown table of result files and exit (no stack)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.markdown:
        print(markdown_table([row for path in args.markdown
                              for row in json.loads(path.read_text())]))
        return 0
    settings = settings_or_exit()
    origin = rest_origin(settings)
    stack = Stack(settings, settings.services.run_path(), origin or "")
    scenarios = choose_scenarios(stack, args.scenarios, args.destructive)
    if scenarios is None:
        return 2
    if not origin or not paper_reachable(stack):
        print("the stack does not trade on a reachable paper exchange (its /paper/faults "
              "and /paper/orders are needed)")
        return 2
    rng = random.Random(args.seed)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # eventlet's, on import
    from shared.signed_rpc import cluster_proxy

    results: list[RunResult] = []
    out = args.json or stack.run_dir / "chaos-results.json"  # rewritten after every run
    out.parent.mkdir(parents=True, exist_ok=True)
    with cluster_proxy(settings.message_queue.amqp_uri, timeout=60) as rpc:
        for scenario in scenarios:
            for run in range(1, args.runs + 1):
                try:
                    result = run_once(stack, rpc, scenario, run, args.size, rng)
                except Exception as exc:  # noqa: BLE001 - a run that errs is a failed run
                    result = RunResult(scenario, run, False, 0.0, Verdict(),
                                       error=f"{type(exc).__name__}: {exc}")
                results.append(result)
                out.write_text(json.dumps([asdict(r) for r in results], indent=1))
                print(f"{scenario} run {run}: {'ok' if result.ok else 'FAILED'} "
                      f"({result.seconds:.0f}s, accepted {result.verdict.accepted}, "
                      f"outcomes {result.verdict.outcomes}, refused {result.verdict.refused}, "
                      f"max unprotected "
                      f"{result.verdict.unprotected_s:.1f}s, risk {result.risk_state})"
                      + (f" {result.error}" if result.error else ""), flush=True)
                if not result.ok and args.stop_on_failure:
                    break
        try:
            flatten(stack, rpc)
        except Exception as exc:  # noqa: BLE001 - reported, the results still count
            print(f"could not flatten after the runs: {exc}")
    print()
    print_table(results)
    print(f"\nresults: {out}")
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
