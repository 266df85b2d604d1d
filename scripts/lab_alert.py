"""Make one alert fire end to end in the running HA lab: ``python -m scripts.lab_alert``.

Stops the feed (supervisord), so the market data the services read grows stale; the lab's
Prometheus (scraping both notify instances, rules k8s/monitoring/alerts.yml) fires
``Phoenix95MarketDataStale`` after its ``for: 30s``, the lab's Alertmanager posts it to
nginx's ``/notify/alertmanager`` (Bearer key), a notify instance queues it in the outbox, and
the Telegram worker, run here against the local Bot API stand-in
(tests/support/telegram_standin.py), sends it. Then the feed is started again and the
RESOLVED message awaited. Prints the time of each step from the feed's stop. The Telegram
senders' consumer group is first moved to the outbox's end: what a benchmark left there is
skipped (lab only).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import lab, lib, supervise
from shared import names
from shared.redis_conn import redis_client
from shared.settings import Settings, get_settings
from tests.support.telegram_standin import TelegramStandin

ALERT = "Phoenix95MarketDataStale"
TOKEN, CHAT = "424242:LAB-ALERT", 4242
TIMEOUT_S = 180.0


def wait(what: str, probe: Callable[[], Any], start: float, timeout: float = TIMEOUT_S) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            took = time.monotonic() - start
            lib.info(f"  +{took:5.1f}s  {what}")
            return took
        time.sleep(0.5)
    raise SystemExit(f"error: {what}: not within {timeout:.0f}s")


def prometheus_alert_state(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=3) as r:
            alerts = json.loads(r.read())["data"]["alerts"]
    except OSError:
        return ""
    states = {a["state"] for a in alerts if a["labels"].get("alertname") == ALERT}
    return "firing" if "firing" in states else ("pending" if states else "")


def skip_outbox_backlog(settings: Settings) -> None:
    """Start the Telegram senders' group at the outbox's end (the lab only): a failover run
    leaves thousands of "signal rejected" alerts that the worker would send first, merged,
    at Telegram's pace (measured: the alert waited behind them for minutes)."""
    client = redis_client(settings.redis_streams, decode_responses=True)
    try:
        client.xgroup_destroy(names.ALERT_OUTBOX_STREAM, names.TELEGRAM_GROUP)
        client.xgroup_create(names.ALERT_OUTBOX_STREAM, names.TELEGRAM_GROUP, id="$",
                             mkstream=True)
    finally:
        client.close()


def main() -> int:
    lab.apply_env()
    settings = get_settings()
    run_dir = settings.services.run_path()
    if not supervise.answering(run_dir):
        print("error: the lab is not running; start it with scripts/up --ha", file=sys.stderr)
        return 2
    prom = settings.high_availability.prometheus_port
    skip_outbox_backlog(settings)
    with TelegramStandin(token=TOKEN) as standin:
        env = dict(os.environ, PHOENIX__TELEGRAM__TOKEN=TOKEN, PHOENIX__TELEGRAM__CHAT_ID=str(CHAT),
                   PHOENIX__TELEGRAM__API_BASE_URL=standin.base_url,
                   PHOENIX__TELEGRAM__COMMAND_POLL_TIMEOUT="2")
        worker = subprocess.Popen([sys.executable, "-m", "nameko_services.notify.telegram_worker"],
                                  cwd=lib.ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        rpc = supervise.client(run_dir).supervisor

        def texts(since: int = 0) -> list[str]:
            return [m.text for m in standin.sent[since:] if ALERT in m.text]

        try:
            lib.section(f"{ALERT} end to end in the lab")
            start = time.monotonic()
            rpc.stopProcess(names.FEED, True)
            lib.info("  +  0.0s  feed stopped (supervisorctl stop feed)")
            wait("Prometheus: alert pending", lambda: prometheus_alert_state(prom), start)
            wait("Prometheus: alert firing", lambda: prometheus_alert_state(prom) == "firing",
                 start)
            wait("Telegram stand-in: [FIRING] message received",
                 lambda: any("[FIRING]" in t for t in texts()), start)
            restart, seen = time.monotonic(), len(standin.sent)
            rpc.startProcess(names.FEED, True)
            lib.info("  feed started again")
            wait("Telegram stand-in: [RESOLVED] message received",
                 lambda: any("[RESOLVED]" in t for t in texts(seen)), restart)
            lib.info("\n" + "\n---\n".join(texts()))
        finally:
            if supervise.state_of(run_dir, names.FEED) != "RUNNING":
                rpc.startProcess(names.FEED, False)
            worker.terminate()
            worker.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
