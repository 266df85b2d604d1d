"""Every service's /metrics parses with the Prometheus text parser (and promtool, when
installed); notify exports the consumer lag of every queue, stream group and topic."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared import names
from shared.settings import Settings
from tests.support.trading import wait_for

pytestmark = pytest.mark.e2e


def scrape(settings: Settings, service: str) -> str:
    with urllib.request.urlopen(settings.services.url_of(service) + "/metrics",
                                timeout=10) as resp:
        assert resp.status == 200
        return str(resp.read().decode())


@pytest.mark.parametrize("service", names.SERVICES)
def test_metrics_parse_and_pass_promtool(settings: Settings, service: str) -> None:
    text = scrape(settings, service)

    families = {f.name: f for f in text_string_to_metric_families(text)}

    assert "process_resident_memory_bytes" in families
    assert any(name.startswith("phoenix95_") for name in families)
    promtool = shutil.which("promtool")
    if promtool is not None:
        result = subprocess.run([promtool, "check", "metrics"], input=text,
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == "" and result.stderr.strip() == ""


def lag_series(settings: Settings) -> dict[tuple[str, str], float]:
    text = scrape(settings, names.NOTIFY)
    return {(s.labels["source"], s.labels["group"]): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "phoenix95_consumer_lag_messages"}


def test_notify_exports_lag_of_every_queue_stream_and_topic(settings: Settings) -> None:
    expected = {(q, g) for q, g in {names.SIGNAL_QUEUE: names.BRAIN,
                                    names.TRADE_QUEUE: names.EXECUTE,
                                    names.RISK_ALERT_QUEUE: names.NOTIFY}.items()}
    expected |= {(stream, group) for stream, groups in names.STREAM_GROUPS.items()
                 for group in groups}

    series = wait_for(lambda: (lambda s: s if expected <= set(s) else None)(
        lag_series(settings)), timeout=30)

    assert all(value >= 0 for value in series.values())
    topics = {source for source, group in series if group == settings.kafka.consumer_group}
    assert topics <= set(names.TOPIC_PARTITIONS)  # Kafka lag, when the broker answers
