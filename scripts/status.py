"""Health of every Phoenix 95 part: ``python scripts/status.py`` (or ``scripts/status``).

Checks the brokers (AMQP login, Redis PING, Kafka TCP), then each program supervisord runs
for `up`: its state, pid, uptime and restart count (from supervisord over XML-RPC) next to
its ``/health`` (alive) and, for the services and the feed, its ``/ready`` (ready: broker
consumers attached, Redis, the feed's state fresh, the database; the failing checks when
not). Exits 1 if anything is down or not ready.
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
import urllib.error
import urllib.request
from collections.abc import Sequence

from scripts import infra, lib, supervise
from scripts.up import process_specs
from shared import names
from shared.settings import settings_or_exit

Row = tuple[str, bool, str]
TANSU_LABEL = "kafka (tansu)"  # the embedded broker program, next to the "kafka" reachability row
WITH_READY = frozenset({*names.SERVICES, names.FEED})  # the programs answering GET /ready


def uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    text = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


def ready_url_of(name: str, health_url: str | None) -> str | None:
    base = name.split("-")[0]  # brain-2: the lab's second instance of brain
    if base not in WITH_READY or not health_url or not health_url.endswith("/health"):
        return None
    return health_url.removesuffix("/health") + "/ready"


def readiness(url: str, timeout: float = 5.0) -> tuple[bool, str]:
    """``(True, "ready")``, or ``(False, "NOT READY: <failing checks>")`` / the error."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= int(resp.status) < 300, "ready"
    except urllib.error.HTTPError as exc:
        try:
            failing = json.loads(exc.read(8192)).get("failing") or []
        except (OSError, ValueError, AttributeError):
            failing = []
        return False, ("NOT READY: " + ", ".join(map(str, failing)) if failing
                       else f"NOT READY: HTTP {exc.code}")
    except (urllib.error.URLError, OSError) as exc:
        return False, f"NOT READY: {getattr(exc, 'reason', exc)}"


def program_row(name: str, info: supervise.ProgramInfo | None, restarts: int,
                health_url: str | None, ready_url: str | None = None) -> Row:
    """One line: supervisord's view (state, pid, uptime, restarts) next to /health and
    /ready."""
    if info is None:
        return name, False, "not configured in supervisord (run scripts/up)"
    running = info.state == "RUNNING"
    detail = (f"{info.state:<8} pid {info.pid or '-':<7} up {uptime(info.uptime_s):<10} "
              f"restarts {restarts:<3}")
    if health_url is None or not running:
        return name, running, detail + ("" if running else f" {info.description}")
    healthy, why = lib.http_ok(health_url)
    detail = f"{detail} {health_url} -> {why}"
    if not healthy or ready_url is None:
        return name, healthy, detail
    ready, state = readiness(ready_url)
    return name, ready, f"{detail}, {state}"


def program_rows(run_dir: Path, names_urls: Sequence[tuple[str, str | None]]) -> list[Row]:
    if not supervise.answering(run_dir):
        return [(name, False, "supervisord not running") for name, _ in names_urls]
    infos = supervise.programs(run_dir)
    restarts = supervise.restart_counts(run_dir)
    return [program_row(name, infos.get(name), restarts.get(name, 0), url,
                        ready_url_of(name, url))
            for name, url in names_urls]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-dashboard", action="store_true",
                        help="do not count a stopped dashboard as down")
    parser.add_argument("--only-infra", action="store_true", help="check the brokers only")
    parser.add_argument("--ha", action="store_true", help="the HA lab (scripts/up --ha)")
    args = parser.parse_args(argv)
    supervise.require_posix()
    if args.ha:
        from scripts import lab

        lab.apply_env()
    settings = settings_or_exit()
    run_dir = settings.services.run_path()
    rows: list[Row] = []

    if args.ha:
        from scripts import lab

        rows += lab.status_rows(settings, run_dir, dashboard=not args.no_dashboard)
        args.only_infra = True  # the lab's programs are in its rows already
    ok, detail = infra.rabbit_reachable(settings)
    rows.append(("rabbitmq", ok, detail))
    ok, detail = infra.redis_reachable(settings)
    rows.append(("redis", ok, detail))
    ok = infra.kafka_reachable(settings)
    rows.append(("kafka", ok, settings.kafka.bootstrap_servers))

    if not args.only_infra:
        wanted = [(s.name, s.health_url)
                  for s in process_specs(settings, dashboard=not args.no_dashboard)]
        if infra.started_marker(run_dir, infra.KAFKA_PROC).exists():
            wanted.insert(0, (infra.KAFKA_PROC, None))
        rows += [(TANSU_LABEL if name == infra.KAFKA_PROC else name, ok, detail)
                 for name, ok, detail in program_rows(run_dir, wanted)]

    lib.section(f"Phoenix 95 status ({run_dir})")
    for name, ok, detail in rows:
        lib.info(f"  {'UP  ' if ok else 'DOWN'}  {name:<16} {detail}")
    down = [name for name, ok, _ in rows if not ok]
    if down:
        lib.info(f"\n{len(down)} part(s) down or not ready: {', '.join(down)}")
        return 1
    lib.info("\nall parts up")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
