"""Health of every Phoenix 95 part: ``python scripts/status.py`` (or ``scripts/status``).

Checks the brokers (AMQP login, Redis PING, Kafka TCP), then each process `up` manages:
alive (pid file points at a live process of ours) and, where it has one, ``/health``.
Exits 1 if anything is down.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts._bootstrap import ensure_venv

if __name__ == "__main__":
    ensure_venv(__file__)

import argparse
from collections.abc import Sequence

from scripts import infra, lib
from scripts.up import process_specs
from shared.settings import settings_or_exit


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-dashboard", action="store_true",
                        help="do not count a stopped dashboard as down")
    parser.add_argument("--only-infra", action="store_true", help="check the brokers only")
    args = parser.parse_args(argv)
    settings = settings_or_exit()
    run_dir = settings.services.run_path()
    rows: list[tuple[str, bool, str]] = []

    ok, detail = infra.rabbit_reachable(settings)
    rows.append(("rabbitmq", ok, detail))
    ok, detail = infra.redis_reachable(settings)
    rows.append(("redis", ok, detail))
    ok = infra.kafka_reachable(settings)
    rows.append(("kafka", ok, settings.kafka.bootstrap_servers))

    if not args.only_infra:
        for spec in process_specs(settings, dashboard=not args.no_dashboard):
            pid = lib.running_pid(run_dir, spec.name)
            if pid is None:
                rows.append((spec.name, False, "not running"))
                continue
            if spec.health_url is None:
                rows.append((spec.name, True, f"pid {pid}"))
                continue
            healthy, why = lib.http_ok(spec.health_url)
            rows.append((spec.name, healthy, f"pid {pid}, {spec.health_url} -> {why}"))

    lib.section(f"Phoenix 95 status ({run_dir})")
    for name, ok, detail in rows:
        lib.info(f"  {'UP  ' if ok else 'DOWN'}  {name:<16} {detail}")
    down = [name for name, ok, _ in rows if not ok]
    if down:
        lib.info(f"\n{len(down)} part(s) down: {', '.join(down)}")
        return 1
    lib.info("\nall parts up")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
