"""``scripts/up`` then ``scripts/down``, N times from stopped; then ``kill -9`` of each program.

    python -m benchmarks.up_down --iterations 20 --heal --json docs/up_down_last.json

Runs on an isolated port block (``--block 26``: ports 26100-26104, 26110, 26501, 26092; run
folder ``.run-<name>``; vhost ``/trading_<name>``; Redis DB ``--redis-db``) so it never meets
another stack on the machine. Each child of ``up`` carries a marker variable: after ``down``
any live process with the marker, or any of the block's ports still listening, is a leftover.

``--heal``: one more ``up``, then each supervised program is killed with SIGKILL in turn:
seconds until supervisord spawned it again, until it answered its health URL, and until
supervisord called it RUNNING again (which takes at least ``startsecs`` = 3 s).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts import supervise  # noqa: E402

MARK = "PHOENIX_UP_DOWN_MARK"


def block_env(block: int, name: str, redis_db: int) -> dict[str, str]:
    """The environment of the isolated port block (see docs/deployment.md)."""
    n = block
    return {
        "PHOENIX__SERVICES__BRAIN_PORT": f"{n}100", "PHOENIX__SERVICES__RISK_PORT": f"{n}101",
        "PHOENIX__SERVICES__EXECUTE_PORT": f"{n}102", "PHOENIX__SERVICES__NOTIFY_PORT": f"{n}103",
        "PHOENIX__SERVICES__FEED_PORT": f"{n}104", "PHOENIX__SERVICES__DASHBOARD_PORT": f"{n}501",
        "PHOENIX__PAPER_EXCHANGE__PORT": f"{n}110", "PHOENIX__SERVICES__RUN_DIR": f".run-{name}",
        "PHOENIX__MESSAGE_QUEUE__VIRTUAL_HOST": f"/trading_{name}",
        "PHOENIX__MESSAGE_QUEUE__USERNAME": f"phoenix95_{name}",
        "PHOENIX__REDIS_STREAMS__URL": f"redis://127.0.0.1:6379/{redis_db}",
        "PHOENIX__KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{n}092",
        "PHOENIX__DATABASE__URL": f"sqlite:///.run-{name}/phoenix95.db",
        "PHOENIX__PAPER_EXCHANGE__STATE_PATH": f".run-{name}/paper_exchange.db",
        "PHOENIX_DOTENV": f".run-{name}/.env",
        "PHOENIX__PAPER_EXCHANGE__TICK_INTERVAL_MS": "200",
        "PHOENIX__DASHBOARD__AUTH_ENABLED": "false",
        "PHOENIX__SECURITY__AUTH_FAILURE_LIMIT": "0",
    }


def block_ports(block: int) -> list[int]:
    return [int(f"{block}{p}") for p in ("100", "101", "102", "103", "104", "110", "501",
                                         "092")]


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def marked_processes(mark: str) -> list[str]:
    """Live processes whose environment carries ``mark`` (this one excluded)."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes():
                continue
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if stat[0] in {"Z", "X"}:
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
        except OSError:
            continue
        found.append(f"{entry.name} {cmd}")
    return found


def run(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[int, float]:
    started = time.monotonic()
    with open(log, "ab") as out:
        out.write(f"\n=== {' '.join(cmd)} at {time.strftime('%H:%M:%S')}\n".encode())
        out.flush()
        try:
            code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = -1
    return code, time.monotonic() - started


def up_down(env: dict[str, str], ports: list[int], log: Path, iterations: int,
            up_args: list[str]) -> list[dict[str, Any]]:
    results = []
    for i in range(1, iterations + 1):
        mark = uuid.uuid4().hex
        run_env = {**env, MARK: mark}
        up_code, up_s = run([sys.executable, "scripts/up.py", *up_args], run_env, log, 900)
        down_code, down_s = run([sys.executable, "scripts/down.py"], run_env, log, 300)
        leftovers = marked_processes(mark)
        open_ports = [p for p in ports if listening(p)]
        row = {"iteration": i, "up_ok": up_code == 0, "up_s": round(up_s, 1),
               "down_ok": down_code == 0, "down_s": round(down_s, 1),
               "leftover_processes": leftovers, "ports_still_open": open_ports}
        results.append(row)
        print(json.dumps(row), flush=True)
    return results


def wait(condition: Callable[[], Any], timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def health_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def heal(env: dict[str, str], log: Path, up_args: list[str]) -> list[dict[str, Any]]:
    """kill -9 each program of a running stack; time until it is back."""
    run_env = {**env, MARK: uuid.uuid4().hex}
    code, _ = run([sys.executable, "scripts/up.py", *up_args], run_env, log, 900)
    if code != 0:
        raise SystemExit("heal: scripts/up failed; see the log")
    run_dir = ROOT / env["PHOENIX__SERVICES__RUN_DIR"]
    os.environ.update(env)  # the specs' health URLs come from the same settings
    from scripts.up import process_specs
    from shared.settings import get_settings
    get_settings.cache_clear()
    urls = {s.name: s.health_url for s in process_specs(get_settings())}
    rows = []
    try:
        for name, info in sorted(supervise.programs(run_dir).items()):
            # brain-2 shares brain's port: its health URL would answer from brain
            url = urls.get(name) if name != "brain-2" else None
            row = heal_one(run_dir, name, info.pid, url)
            rows.append(row)
            print(json.dumps(row), flush=True)
            wait(lambda: all(p.state == "RUNNING" for p in supervise.programs(run_dir).values()),
                 60)
    finally:
        run([sys.executable, "scripts/down.py"], run_env, log, 300)
    return rows


def heal_one(run_dir: Path, name: str, old: int, url: str | None) -> dict[str, Any]:
    """SIGKILL ``name`` (pid ``old``); seconds until respawned, healthy, RUNNING."""
    def current() -> supervise.ProgramInfo:
        return supervise.programs(run_dir)[name]

    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    spawned = wait(lambda: current().pid not in (0, old), 60)
    health = None
    if url is not None and wait(lambda: health_ok(url), 60) is not None:
        health = time.monotonic() - killed
    running = None
    if wait(lambda: current().state == "RUNNING" and current().pid != old, 60) is not None:
        running = time.monotonic() - killed
    return {"program": name, "respawned_s": _r(spawned), "health_200_s": _r(health),
            "running_s": _r(running)}


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--block", type=int, default=26)
    parser.add_argument("--name", default="ops")
    parser.add_argument("--redis-db", type=int, default=6)
    parser.add_argument("--heal", action="store_true", help="then kill -9 each program")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--log", default="/tmp/phoenix95-up-down.log")
    args, up_args = parser.parse_known_args()
    base = {k: v for k, v in os.environ.items() if not k.startswith("PHOENIX")}
    env = {**base, **block_env(args.block, args.name, args.redis_db)}
    log = Path(args.log)
    rows = up_down(env, block_ports(args.block), log, args.iterations, up_args)
    ok = [r for r in rows if r["up_ok"] and r["down_ok"] and not r["leftover_processes"]
          and not r["ports_still_open"]]
    report: dict[str, Any] = {
        "iterations": len(rows), "clean_successes": len(ok),
        "up_s": _stats([r["up_s"] for r in rows if r["up_ok"]]),
        "down_s": _stats([r["down_s"] for r in rows]),
        "runs": rows, "loadavg_at_end": os.getloadavg()[0],
    }
    if args.json:  # the up/down figures are kept even if the heal run fails
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if args.heal:
        report["kill_9"] = heal(env, log, up_args)
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0 if len(ok) == len(rows) else 1


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": min(values), "median": round(statistics.median(values), 1),
            "max": max(values)}


if __name__ == "__main__":
    raise SystemExit(main())
