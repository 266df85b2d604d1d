"""services: the address a service listens on (bind_host) apart from the one it is called at
(host, or hosts.<service> in compose/k8s)."""

from __future__ import annotations

import pytest

from nameko_services.runner import nameko_config
from shared.settings import ConfigError, ServicesSettings, load_settings


def test_on_one_machine_services_listen_and_are_called_on_loopback() -> None:
    services = ServicesSettings()

    assert services.bind_address() == "127.0.0.1"
    assert services.url_of("risk") == "http://127.0.0.1:8101"


def test_in_a_container_they_bind_everywhere_and_are_called_by_their_dns_name() -> None:
    services = ServicesSettings(bind_host="0.0.0.0",
                                hosts={"risk": "risk", "execute": "execute"})

    assert services.bind_address() == "0.0.0.0"
    assert services.url_of("risk") == "http://risk:8101"
    assert services.url_of("execute") == "http://execute:8102"
    assert services.url_of("brain") == "http://127.0.0.1:8100"  # not mapped: host


def test_the_old_host_wildcard_binds_everywhere_and_is_called_on_loopback() -> None:
    services = ServicesSettings(host="0.0.0.0")

    assert services.bind_address() == "0.0.0.0"
    assert services.url_of("notify") == "http://127.0.0.1:8103"


@pytest.mark.parametrize("hosts", [{"risk": "0.0.0.0"}, {"risk": ""}, {"riks": "risk"}])
def test_a_wildcard_or_unknown_service_in_hosts_is_refused(
        secrets_env: dict[str, str], hosts: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="services.hosts"):
        load_settings(services={"hosts": hosts})


def test_hosts_come_from_one_variable_per_service(
        secrets_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHOENIX__SERVICES__BIND_HOST", "0.0.0.0")
    monkeypatch.setenv("PHOENIX__SERVICES__HOSTS__DASHBOARD", "dashboard")

    services = load_settings().services

    assert services.url_of("dashboard") == "http://dashboard:8501"
    assert services.bind_address() == "0.0.0.0"


def test_the_runner_binds_nameko_to_bind_host(secrets_env: dict[str, str]) -> None:
    settings = load_settings(services={"bind_host": "0.0.0.0", "hosts": {"brain": "brain"}})

    assert nameko_config(settings, "brain")["WEB_SERVER_ADDRESS"] == "0.0.0.0:8100"


def test_notify_watches_every_services_ready_at_its_advertised_address(
        secrets_env: dict[str, str]) -> None:
    from nameko_services.notify.service import Monitor

    settings = load_settings(services={"bind_host": "0.0.0.0",
                                       "hosts": {"brain": "brain", "feed": "feed"}})
    monitor = Monitor.__new__(Monitor)
    monitor.settings = settings

    targets = monitor.health_targets()

    assert targets["brain"] == "http://brain:8100/ready"
    assert targets["feed"] == "http://feed:8104/ready"
    assert targets["risk"] == "http://127.0.0.1:8101/ready"
    assert "notify" not in targets
    assert all(not url.startswith("http://0.0.0.0") for url in targets.values())


def test_the_dashboard_link_is_its_public_url_else_its_advertised_address(
        secrets_env: dict[str, str]) -> None:
    from nameko.testing.services import worker_factory
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request

    from nameko_services.notify.service import NotifyService

    request = Request(EnvironBuilder(path="/dashboard").get_environ())
    inside = load_settings(services={"hosts": {"dashboard": "dashboard"}})
    public = load_settings(services={"hosts": {"dashboard": "dashboard"}},
                           dashboard={"public_url": "https://ops.example.com/dash/"})

    assert worker_factory(NotifyService, config=inside).dashboard(request).location == \
        "http://dashboard:8501"
    assert worker_factory(NotifyService, config=public).dashboard(request).location == \
        "https://ops.example.com/dash"


def test_a_dashboard_public_url_must_be_absolute(secrets_env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="dashboard.public_url"):
        load_settings(dashboard={"public_url": "dashboard:8501"})
