"""Stop exactly what ``scripts/up`` started: ``python scripts/down.py`` (or ``scripts/down``).

Asks the run folder's supervisord to shut down: it stops every program (SIGTERM to the
process group, SIGKILL after 15 s), the embedded Kafka last, and exits once all are gone.
RabbitMQ and Redis are stopped only when ``up`` started them (recorded in
``<run_dir>/started-by-up``); a broker that was already running is never touched.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts._bootstrap import ensure_venv

if __name__ == "__main__":
    ensure_venv(__file__)

import argparse
import os
from collections.abc import Sequence

from scripts import infra, lib, supervise


def run_dir_from_env() -> Path:
    """The run folder without validating the whole configuration (down must always work)."""
    from shared.settings import ConfigError, load_settings

    try:
        return load_settings().services.run_path()
    except (ConfigError, OSError, ValueError):  # a broken config must not block stopping
        raw = os.environ.get("PHOENIX__SERVICES__RUN_DIR", ".run")
        path = Path(raw)
        return path if path.is_absolute() else lib.ROOT / path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", help="override services.run_dir")
    parser.add_argument("--timeout", type=float, default=90.0,
                        help="seconds to wait for supervisord to stop every program")
    parser.add_argument("--ha", action="store_true",
                        help="stop the HA lab (every program of it, brokers included)")
    args = parser.parse_args(argv)
    supervise.require_posix()
    if args.ha:
        from scripts import lab

        lab.apply_env()
    run_dir = Path(args.run_dir).resolve() if args.run_dir else run_dir_from_env()
    lib.section(f"stopping Phoenix 95 ({run_dir})")
    if not run_dir.exists():
        lib.info("nothing to stop (no run folder)")
        return 0
    code = 0
    try:
        lib.info("  " + supervise.shutdown(run_dir, args.timeout))
    except supervise.SupervisorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    else:
        infra.forget_kafka(run_dir)
    infra.stop_redis(run_dir)
    infra.stop_rabbitmq(run_dir)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
