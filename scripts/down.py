"""Stop exactly what ``scripts/up`` started: ``python scripts/down.py`` (or ``scripts/down``).

Reads the pid files in the run folder, sends SIGTERM to each process group, waits up to
15 s, then SIGKILLs what is left, and removes the pid files. Brokers are stopped only when
``up`` started them (recorded in ``<run_dir>/started-by-up``); a broker that was already
running is never touched.
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

from scripts import infra, lib

# Stop order: the apps before the brokers they use; Kafka (a process of ours) last.
LAST = (infra.KAFKA_PROC,)


def run_dir_from_env() -> Path:
    """The run folder without validating the whole configuration (down must always work)."""
    from shared.settings import ConfigError, load_settings

    try:
        return load_settings().services.run_path()
    except (ConfigError, OSError, ValueError):  # a broken config must not block stopping
        raw = os.environ.get("PHOENIX__SERVICES__RUN_DIR", ".run")
        path = Path(raw)
        return path if path.is_absolute() else lib.ROOT / path


def stop_all(run_dir: Path, timeout: float = 15.0) -> list[str]:
    """Stop every process with a pid file in ``run_dir``; return one line per process."""
    report: list[str] = []
    pid_files = sorted(lib.pid_dir(run_dir).glob("*.pid"),
                       key=lambda p: (p.stem in LAST, p.stem))
    for path in pid_files:
        name = path.stem
        pid = lib.read_pid(path)
        if pid is None:
            report.append(f"{name}: unreadable pid file removed")
        elif lib.pid_is_ours(pid, lib.managed_tag(run_dir, name)):
            how = lib.stop_process(pid, timeout)
            report.append(f"{name}: {how} (pid {pid})")
        else:
            report.append(f"{name}: not running (stale pid {pid})")
        path.unlink(missing_ok=True)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", help="override services.run_dir")
    parser.add_argument("--timeout", type=float, default=15.0,
                        help="seconds to wait after SIGTERM before SIGKILL")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir).resolve() if args.run_dir else run_dir_from_env()
    lib.section(f"stopping Phoenix 95 ({run_dir})")
    if not run_dir.exists():
        lib.info("nothing to stop (no run folder)")
        return 0
    lines = stop_all(run_dir, args.timeout)
    for line in lines:
        lib.info("  " + line)
    if not lines:
        lib.info("  no processes recorded")
    infra.stop_redis(run_dir)
    infra.stop_rabbitmq(run_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
