"""Bring Phoenix 95 up with one command: ``python scripts/up.py`` (or ``scripts/up``).

Idempotent. Creates the virtualenv, generates missing secrets in ``.env``, makes the
brokers reachable (RabbitMQ with vhost/user/topology, Redis with consumer groups, Kafka
with topics), then has supervisord (config, socket and logs in the run folder) start the
paper exchange, the four services, the feed, the dashboard and the Telegram sender, and
waits until each is healthy. supervisord restarts any of them that dies.
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
import time
from collections.abc import Sequence

from scripts import infra, lab, lib, local_brokers, provision, supervise
from shared import names
from shared.settings import DOTENV_ENV, Settings, get_settings, settings_or_exit

# a ceiling, not a wait: up returns as soon as every part is healthy. A cold start of the
# seven Python processes took 95 s on a 2-core machine at load 28 (other stacks running)
HEALTH_TIMEOUT = 240.0
PAPER = "paper_exchange"
DASHBOARD = "dashboard"
TELEGRAM = "telegram_worker"
FEED_MODULE = "nameko_services.feed"


def dotenv_path() -> Path:
    raw = os.environ.get(DOTENV_ENV)
    if not raw:
        return lib.ROOT / ".env"
    path = Path(raw)
    return path if path.is_absolute() else lib.ROOT / path


def ensure_dotenv(path: Path) -> None:
    created, added = lib.ensure_env_file(path)
    if created:
        lib.info(f".env: created {path} (mode 0600) with fresh random secrets: "
                 + ", ".join(added))
    elif added:
        lib.info(f".env: added missing keys to {path}: " + ", ".join(added))
    else:
        lib.info(f".env: {path} has every required key (nothing changed)")


def process_specs(settings: Settings, dashboard: bool = True) -> list[lib.ProcSpec]:
    """Every program supervisord runs for up, in start order, with health URLs."""
    py = sys.executable
    svc = settings.services
    specs: list[lib.ProcSpec] = []
    # With exchange.rest_url set the exchange is someone else's, started separately.
    if settings.exchange.mode == "paper" and not settings.exchange.rest_url:
        specs.append(lib.ProcSpec(
            PAPER, (py, "-m", "nameko_services.paper_exchange"),
            f"{settings.paper_exchange.base_url}/health", priority=10,
        ))
    specs.append(lib.ProcSpec(
        names.FEED, (py, "-m", FEED_MODULE), f"{svc.url_of(names.FEED)}/health",
        priority=20,
    ))
    for service in names.SERVICES:
        specs.append(lib.ProcSpec(
            service, (py, "-m", "nameko_services.runner", service),
            f"{svc.url_of(service)}/health", priority=30,
        ))
    # more brains on the same port (the kernel spreads connections, SO_REUSEPORT) and the
    # same queue; /health answers from any of them, so the others are watched by state
    for n in range(2, svc.brain_process_count() + 1):
        specs.append(lib.ProcSpec(
            f"{names.BRAIN}-{n}", (py, "-m", "nameko_services.runner", names.BRAIN),
            priority=30,
        ))
    if dashboard:
        specs.append(lib.ProcSpec(
            DASHBOARD,
            (py, "-m", "streamlit", "run", "dashboard/app.py",
             "--server.port", str(svc.dashboard_port), "--server.address", svc.bind_address(),
             "--server.headless", "true", "--browser.gatherUsageStats", "false"),
            f"http://{svc.host}:{svc.dashboard_port}/_stcore/health", priority=40,
        ))
    if settings.telegram.active:
        specs.append(lib.ProcSpec(
            TELEGRAM, (py, "-m", "nameko_services.notify.telegram_worker"), priority=40))
    return specs


def wait_healthy(run_dir: Path, specs: Sequence[lib.ProcSpec], timeout: float) -> bool:
    """Every spec answers /health (or, without one, supervisord calls it RUNNING).

    A program supervisord gave up on (FATAL) fails at once; one that crashed and is being
    restarted keeps its chance until the deadline.
    """
    def alive(name: str) -> bool:
        return supervise.state_of(run_dir, name) in supervise.ALIVE_STATES

    targets = {s.name: s.health_url for s in specs if s.health_url}
    result = lib.wait_for_health(targets, timeout, alive=alive)
    for name, url in result.ok.items():
        lib.info(f"{name}: healthy ({url})")
    deadline = time.monotonic() + timeout
    for spec in specs:
        if spec.health_url is not None:
            continue
        state = supervise.state_of(run_dir, spec.name)
        while state != "RUNNING" and state in supervise.ALIVE_STATES \
                and time.monotonic() < deadline:
            time.sleep(0.5)
            state = supervise.state_of(run_dir, spec.name)
        if state == "RUNNING":
            lib.info(f"{spec.name}: running (up for {supervise.START_SECS}s)")
        else:
            result.failed[spec.name] = f"supervisord state {state}"
    for name, reason in result.failed.items():
        print(f"FAILED {name}: {reason}", file=sys.stderr)
        lib.print_tail(lib.log_file(run_dir, name))
    return result.all_ok


def prepare_database(settings: Settings) -> None:
    """Create the SQLite folder and the schema once, before several services race for it."""
    url = settings.database.resolved_url()
    prefix = "sqlite:///"
    if url.startswith(prefix) and url != prefix + ":memory:":
        Path(url[len(prefix):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        from shared import db
    except ImportError:
        return
    make_engine = getattr(db, "make_engine", None)
    if make_engine is None:
        return
    from sqlalchemy.exc import SQLAlchemyError

    try:
        make_engine(settings).dispose()  # make_engine runs the idempotent create_all
    except SQLAlchemyError as exc:
        lib.warn(f"database: schema not created ({type(exc).__name__}); services will retry")
        return
    lib.info("database: schema ready")


def curl_example(settings: Settings, env_file: Path) -> str:
    """The README's TradingView-style alert; the secret travels in the JSON body."""
    webhook = f"{settings.services.url_of(names.BRAIN)}/webhook"
    key = "PHOENIX__SECURITY__WEBHOOK_SECRET"
    return (
        f"SECRET=\"${{{key}:-$(sed -n 's/^{key}=//p' '{env_file}')}}\"\n"
        f"curl -sS -X POST {webhook} -H 'Content-Type: text/plain' \\\n"
        "  -d '{\"secret\":\"'\"$SECRET\"'\",\"ticker\":\"BINANCE:BTCUSDT.P\",\"action\":\"buy\","
        "\"price\":60000.5,\"confidence\":0.8,\"strategy\":\"ema-cross\",\"interval\":\"15\","
        "\"id\":\"readme-'\"$(date +%s)\"'\",\"time\":\"'\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"'\"}'"
    )


def summary(settings: Settings, run_dir: Path, specs: Sequence[lib.ProcSpec],
            env_file: Path) -> None:
    lib.section("Phoenix 95 is up")
    for spec in specs:
        lib.info(f"  {spec.name:<16} {spec.health_url or '(no HTTP endpoint)'}")
    svc = settings.services
    if any(s.name == DASHBOARD for s in specs):
        lib.info(f"  dashboard        http://{svc.host}:{svc.dashboard_port}/")
    lib.info(f"  webhook          {svc.url_of(names.BRAIN)}/webhook")
    lib.info(f"  logs             {lib.log_dir(run_dir)} (rotated by supervisord)")
    lib.info("  stop with        python scripts/down.py   (status: python scripts/status.py)")
    lib.info(f"  supervisorctl    {sys.executable} -m supervisor.supervisorctl "
             f"-c {supervise.conf_path(run_dir)} status")
    lib.info("\nSend a test alert (secret read from the environment or " f"{env_file}):\n")
    lib.info(curl_example(settings, env_file))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-dashboard", action="store_true", help="do not start Streamlit")
    parser.add_argument("--only-infra", action="store_true",
                        help="brokers and topology only; start no Phoenix process")
    parser.add_argument("--run-dir", help="override services.run_dir (supervisord, logs)")
    parser.add_argument("--health-timeout", type=float, default=HEALTH_TIMEOUT)
    parser.add_argument("--ha", action="store_true",
                        help="the HA lab: 3 RabbitMQ nodes, Redis + Sentinel, two instances "
                             "of each service behind nginx, Prometheus, Alertmanager "
                             "(run dir .run-ha; see scripts/lab.py)")
    args = parser.parse_args(argv)
    supervise.require_posix()
    if args.ha:
        lab.apply_env()
    if args.run_dir:
        os.environ["PHOENIX__SERVICES__RUN_DIR"] = str(Path(args.run_dir).resolve())

    lib.section("configuration")
    env_file = dotenv_path()
    ensure_dotenv(env_file)
    get_settings.cache_clear()
    settings = settings_or_exit()
    run_dir = settings.services.run_path()
    lib.prepare_run_dir(run_dir)
    lib.info(f"settings valid (exchange mode {settings.exchange.mode}); run dir {run_dir}")
    if args.ha:
        return lab.up(settings, run_dir, dashboard=not args.no_dashboard,
                      only_infra=args.only_infra, wait_healthy=wait_healthy,
                      health_timeout=args.health_timeout, env_file=env_file)

    lib.section("brokers")
    try:
        infra.ensure_rabbitmq(settings, run_dir)
        infra.ensure_redis(settings, run_dir)
        kafka = infra.embedded_kafka_spec(settings, run_dir)
        specs = provision.with_identities(process_specs(settings, dashboard=not args.no_dashboard),
                                          provision.provision_local(
                                              settings, env_file,
                                              local_brokers.rabbit_node(run_dir)))
        lib.info(supervise.start_daemon(run_dir, ([kafka] if kafka else []) + specs))
        infra.ensure_kafka(settings, run_dir,
                           start=lambda name: supervise.start_programs(run_dir, [name]))
    except (infra.InfraError, supervise.SupervisorError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.only_infra:
        lib.info("\n--only-infra: brokers and topology ready; no Phoenix process started")
        return 0

    lib.section("processes")
    prepare_database(settings)
    # The paper exchange first: the feed and execute talk to it as soon as they start.
    stages = [[s for s in specs if s.name == PAPER], [s for s in specs if s.name != PAPER]]
    for stage in stages:
        if not stage:
            continue
        for line in supervise.start_programs(run_dir, [s.name for s in stage]):
            lib.info(line)
        if not wait_healthy(run_dir, stage, args.health_timeout):
            print("error: not every part became healthy; see the logs above. "
                  "Stop what started with scripts/down.", file=sys.stderr)
            return 1
    summary(settings, run_dir, specs, env_file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
