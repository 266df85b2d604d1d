"""The test command CI runs: ``python scripts/test.py [pytest args]`` (or ``scripts/test``).

Runs lint (ruff), types (mypy), then brings the stack up in an ISOLATED test environment
(own ports 181xx with the feed on 18104, run folder ``.run-test`` with its own supervisord,
vhost ``/trading_test``, Redis db 1, Kafka on 19092,
SQLite in ``.run-test``, generated secrets in ``.run-test/.env.test``), runs pytest with
that environment and always stops the test stack afterwards. Exits with pytest's code
(exit 5, "no tests collected", counts as a failure). Never touches the user's ``.env``,
the ``/trading`` vhost or Redis db 0.

Own options (everything else goes to pytest, e.g. ``scripts/test -k webhook -x``):
``--no-dashboard`` (skip Streamlit and its e2e tests), ``--infra-only`` (start brokers only,
not the services),
``--no-lint``, ``--no-up`` (run pytest without starting anything).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts._bootstrap import ensure_venv

if __name__ == "__main__":
    ensure_venv(__file__)

import argparse
import configparser
import os
import shutil
import subprocess
import time
import tomllib
from collections.abc import Mapping, Sequence

from scripts import lib

TEST_RUN_DIR = ".run-test"
TEST_VHOST = "/trading_test"
TEST_REDIS_URL = "redis://127.0.0.1:6379/1"
TEST_ENV: dict[str, str] = {
    "PHOENIX__SERVICES__BRAIN_PORT": "18100",
    "PHOENIX__SERVICES__RISK_PORT": "18101",
    "PHOENIX__SERVICES__EXECUTE_PORT": "18102",
    "PHOENIX__SERVICES__NOTIFY_PORT": "18103",
    "PHOENIX__SERVICES__FEED_PORT": "18104",
    "PHOENIX__SERVICES__DASHBOARD_PORT": "18501",
    "PHOENIX__PAPER_EXCHANGE__PORT": "18110",
    "PHOENIX__SERVICES__RUN_DIR": TEST_RUN_DIR,
    "PHOENIX__MESSAGE_QUEUE__VIRTUAL_HOST": TEST_VHOST,
    # Own broker user: `up` (re)sets the password of its user, and the user's running
    # stack must keep authenticating as phoenix95 with the password from their .env.
    "PHOENIX__MESSAGE_QUEUE__USERNAME": "phoenix95_test",
    "PHOENIX__REDIS_STREAMS__URL": TEST_REDIS_URL,
    "PHOENIX__KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:19092",
    "PHOENIX__DATABASE__URL": f"sqlite:///{TEST_RUN_DIR}/phoenix95.db",
    "PHOENIX__PAPER_EXCHANGE__STATE_PATH": f"{TEST_RUN_DIR}/paper_exchange.db",
    "PHOENIX_DOTENV": f"{TEST_RUN_DIR}/.env.test",
    "PHOENIX__PAPER_EXCHANGE__TICK_INTERVAL_MS": "200",
    # The live code path end to end: live mode pointed at a paper exchange that this
    # script starts separately (a dress rehearsal of trading on Binance).
    "PHOENIX__EXCHANGE__MODE": "live",
    "PHOENIX__EXCHANGE__REST_URL": "http://127.0.0.1:18110",
    "PHOENIX__EXCHANGE__WS_URL": "ws://127.0.0.1:18110/ws",
    # the e2e tests render the dashboard headless (no login); tests/unit test the login
    "PHOENIX__DASHBOARD__AUTH_ENABLED": "false",
    # e2e and the fuzzer send wrong keys on purpose, all from 127.0.0.1: no lockout here
    "PHOENIX__SECURITY__AUTH_FAILURE_LIMIT": "0",
}
# Keys of the user's shell that must not leak into the isolated run.
SCRUBBED_PREFIXES = ("PHOENIX__", "PHOENIX_DOTENV", "PHOENIX_CONFIG")
PYTEST_TIMEOUT_S = 25 * 60
STEP_TIMEOUT_S = 10 * 60


def isolated_environment(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` without the user's PHOENIX settings, plus the isolated test settings."""
    env = {k: v for k, v in base.items() if not k.startswith(SCRUBBED_PREFIXES)}
    env.update(TEST_ENV)
    env.setdefault("PHOENIX_LOG_LEVEL", "INFO")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def redis_db_index(url: str) -> int:
    from redis.connection import parse_url

    return int(parse_url(url).get("db", 0))


def _run(cmd: Sequence[str], env: Mapping[str, str], timeout: float = STEP_TIMEOUT_S) -> int:
    lib.info("+ " + " ".join(cmd))
    proc = subprocess.Popen(list(cmd), cwd=lib.ROOT, env=dict(env))
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        lib.warn(f"timed out after {timeout:.0f}s: {' '.join(cmd)}")
        proc.kill()
        proc.wait()
        return 124
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        raise


def ruff_command() -> list[str]:
    cmd = [sys.executable, "-m", "ruff", "check", "."]
    configured = (lib.ROOT / "ruff.toml").is_file() or (lib.ROOT / ".ruff.toml").is_file() \
        or has_config("pyproject.toml", "tool.ruff")
    return cmd if configured else [*cmd, "--line-length", "100"]


def mypy_files_from_config() -> list[str] | None:
    """The ``files`` of the project's mypy config; ``None`` when no config sets them."""
    pyproject = lib.ROOT / "pyproject.toml"
    if pyproject.is_file():
        tool = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {})
        if "mypy" in tool:
            files = tool["mypy"].get("files")
            if files is None:
                return None
            return [str(f) for f in files] if isinstance(files, list) else \
                [f.strip() for f in str(files).split(",") if f.strip()]
    for name in ("mypy.ini", ".mypy.ini", "setup.cfg"):
        parser = configparser.ConfigParser()
        if parser.read(lib.ROOT / name) and parser.has_section("mypy"):
            raw = parser.get("mypy", "files", fallback="")
            return [f.strip() for f in raw.split(",") if f.strip()] or None
    return None


def has_config(name: str, section: str) -> bool:
    path = lib.ROOT / name
    return path.is_file() and f"[{section}]" in path.read_text(encoding="utf-8", errors="replace")


def mypy_command() -> list[str]:
    """mypy over the configured ``files`` (or the default packages), skipping empty ones.

    An empty package (e.g. a folder another team has not filled yet) would make mypy
    stop with "There are no .py[i] files", so only targets holding Python are passed.
    """
    configured = any(has_config(n, s) for n, s in (
        ("pyproject.toml", "tool.mypy"), ("mypy.ini", "mypy"), (".mypy.ini", "mypy"),
        ("setup.cfg", "mypy")))
    wanted = mypy_files_from_config() or list(DEFAULT_MYPY_TARGETS)
    targets = [t for t in wanted if _holds_python(lib.ROOT / t)]
    base = [sys.executable, "-m", "mypy"]
    return [*base, *targets] if configured else [*base, "--ignore-missing-imports", *targets]


DEFAULT_MYPY_TARGETS = ("shared", "nameko_services", "dashboard", "scripts")


def _holds_python(path: Path) -> bool:
    if path.is_file():
        return path.suffix in {".py", ".pyi"}
    return path.is_dir() and any(path.rglob("*.py"))


def enable_rabbit_management() -> None:
    """Best effort: nameko's ``rabbit_config`` fixture needs the management API (:15672)."""
    if lib.tcp_open("127.0.0.1", 15672):
        lib.info("rabbitmq management API already on :15672")
        return
    if os.name == "nt" or os.geteuid() != 0 or shutil.which("rabbitmq-plugins") is None:
        lib.info("skipping rabbitmq_management (needs local root and rabbitmq-plugins)")
        return
    code, out = lib.run_quiet(["rabbitmq-plugins", "enable", "rabbitmq_management"], timeout=120)
    if code != 0:
        lib.warn(f"could not enable rabbitmq_management: {out.strip()[-500:]}")
        return
    up = lib.wait_tcp("127.0.0.1", 15672, 30)
    lib.info("rabbitmq management API on :15672" if up else
             "warning: rabbitmq_management enabled but :15672 is not open yet")


def clean_slate(env: Mapping[str, str]) -> None:
    """Flush the TEST Redis db, drop the TEST SQLite db and vhost (never db 0 or /trading)."""
    import redis

    url = env["PHOENIX__REDIS_STREAMS__URL"]
    if redis_db_index(url) == 0:
        raise SystemExit(f"refusing to flush Redis db 0 ({url}) in the test run")
    try:
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)
        client.flushdb()
        client.close()
        lib.info(f"redis: flushed test db {url}")
    except redis.RedisError as exc:
        lib.warn(f"redis: could not flush {url}: {exc} (up will try to start Redis)")
    for db_file in [*(lib.ROOT / TEST_RUN_DIR).glob("phoenix95.db*"),
                    *(lib.ROOT / TEST_RUN_DIR).glob("paper_exchange.db*")]:
        db_file.unlink()
        lib.info(f"sqlite: removed {db_file.relative_to(lib.ROOT)}")
    vhost = env["PHOENIX__MESSAGE_QUEUE__VIRTUAL_HOST"]
    if not vhost.endswith("_test"):
        raise SystemExit(f"refusing to delete vhost {vhost!r}: not a *_test vhost")
    if shutil.which("rabbitmqctl") and lib.tcp_open("127.0.0.1", 5672):
        code, out = lib.run_quiet(["rabbitmqctl", "-q", "list_vhosts", "name"], timeout=60)
        if code == 0 and vhost in lib.names_in(out.splitlines()):
            code, out = lib.run_quiet(["rabbitmqctl", "delete_vhost", vhost], timeout=60)
            lib.info(f"rabbitmq: deleted test vhost {vhost}" if code == 0 else
                     f"warning: delete_vhost {vhost} failed: {out.strip()}")


def install_validators(env: Mapping[str, str]) -> None:
    """Deployment-file validators (docker compose, promtool, amtool, nginx, k8s schemas).

    tests/unit/test_deploy_files.py fails in CI without them; locally it skips.
    """
    lib.section("validators")
    script = lib.ROOT / "compose" / "validators.sh"
    if os.name == "nt" or shutil.which("sh") is None:
        lib.info("skipping compose/validators.sh (needs a POSIX shell)")
        return
    if _run(["sh", str(script), sys.executable], env, timeout=900) != 0:
        lib.warn("compose/validators.sh failed: deployment-file tests will say what is missing")


def install_chromium(env: Mapping[str, str]) -> None:
    """Debian's chromium for the dashboard screenshot e2e test (best effort, root only)."""
    if shutil.which("chromium") or shutil.which("chromium-browser"):
        return
    if os.name == "nt" or not hasattr(os, "geteuid") or os.geteuid() != 0 \
            or shutil.which("apt-get") is None:
        lib.info("chromium missing and not installable here: the screenshot test will skip "
                 "(or fail in CI)")
        return
    lib.section("chromium")
    apt_env = {**env, "DEBIAN_FRONTEND": "noninteractive"}
    if _run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], apt_env,
            timeout=900) != 0:
        _run(["apt-get", "update"], apt_env, timeout=600)
        if _run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], apt_env,
                timeout=900) != 0:
            lib.warn("could not install chromium: the dashboard screenshot test will fail")


def lint(env: Mapping[str, str]) -> list[str]:
    failures: list[str] = []
    lib.section("ruff")
    if _run(ruff_command(), env) != 0:
        failures.append("ruff")
    lib.section("mypy")
    if _run(mypy_command(), env) != 0:
        failures.append("mypy")
    return failures


def start_paper_exchange(env: Mapping[str, str]) -> subprocess.Popen[bytes] | None:
    """The exchange the live-mode test stack trades on, started apart from the stack."""
    lib.section("test environment: paper exchange (separately started)")
    dotenv = lib.ROOT / env["PHOENIX_DOTENV"]
    lib.ensure_env_file(dotenv)  # its keys are the ones the stack will sign with
    log = lib.log_file(lib.ROOT / TEST_RUN_DIR, "paper_exchange")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nameko_services.paper_exchange"],
                                cwd=lib.ROOT, env=dict(env), stdout=out,
                                stderr=subprocess.STDOUT)
    url = env["PHOENIX__EXCHANGE__REST_URL"] + "/health"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if lib.http_ok(url)[0]:
            lib.info(f"paper exchange: healthy ({url})")
            return proc
        time.sleep(0.3)
    lib.warn(f"paper exchange did not become healthy at {url}")
    lib.print_tail(log)
    stop_paper_exchange(proc)
    return None


def stop_paper_exchange(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def start_test_stack(env: Mapping[str, str], infra_only: bool, dashboard: bool) -> int:
    lib.section("test environment: up")
    up_cmd = [sys.executable, str(lib.ROOT / "scripts" / "up.py")]
    if infra_only:
        up_cmd.append("--only-infra")
    elif not dashboard:
        up_cmd.append("--no-dashboard")
    return _run(up_cmd, env)


def run_pytest(env: Mapping[str, str], pytest_args: Sequence[str]) -> int:
    lib.section("pytest")
    code = _run([sys.executable, "-m", "pytest", "tests", "-q", *pytest_args], env,
                timeout=PYTEST_TIMEOUT_S)
    if code == 5:
        lib.warn("pytest collected no tests: counted as a failure")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Unknown arguments go to pytest; use '-- --help' for pytest's own help.",
    )
    parser.add_argument("--no-dashboard", action="store_true",
                        help="do not start the dashboard (its e2e tests then skip)")
    parser.add_argument("--with-dashboard", action="store_true",
                        help="the default; kept for old command lines")
    parser.add_argument("--infra-only", action="store_true")
    parser.add_argument("--no-lint", action="store_true")
    parser.add_argument("--no-up", action="store_true")
    args, pytest_args = parser.parse_known_args(argv)
    if pytest_args[:1] == ["--"]:
        pytest_args = pytest_args[1:]
    started = time.monotonic()
    env = isolated_environment(os.environ)
    lib.prepare_run_dir(lib.ROOT / TEST_RUN_DIR)
    install_validators(env)
    install_chromium(env)
    failures = [] if args.no_lint else lint(env)

    code = 1
    paper: subprocess.Popen[bytes] | None = None
    try:
        up_code = 0
        if not args.no_up:
            lib.section("test environment: clean slate")
            enable_rabbit_management()
            clean_slate(env)
            paper = start_paper_exchange(env)
            up_code = 1 if paper is None else start_test_stack(
                env, args.infra_only, not args.no_dashboard)
        if up_code != 0:
            failures.append("up")
        else:
            code = run_pytest(env, pytest_args)
            if code != 0:
                failures.append(f"pytest (exit {code})")
    finally:
        if not args.no_up:
            lib.section("test environment: down")
            _run([sys.executable, str(lib.ROOT / "scripts" / "down.py")], env)
            stop_paper_exchange(paper)
    lib.section("summary")
    elapsed = time.monotonic() - started
    if failures:
        lib.info(f"FAILED: {', '.join(failures)}  ({elapsed:.0f}s)")
        return code or 1
    lib.info(f"all checks passed ({elapsed:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
