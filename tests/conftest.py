"""Test pyramid (see each folder's conftest for its rules).

* ``tests/unit``: plain engines and Nameko services through ``worker_factory``; anything
  that crosses a service boundary (bus, exchange, another service) is a fake.
* ``tests/integration``: one part against the real brokers and the real paper exchange
  (RabbitMQ, Redis, Kafka-compatible Tansu, PostgreSQL), with names unique to each test.
* ``tests/e2e``: the running system (``scripts/test`` starts it) through HTTP, RPC and ccxt.

No test monkey-patches eventlet: the services run as real ``nameko run`` processes, and
the standalone RPC proxy works unpatched.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings as hypothesis_settings

# Property tests check values, never time: on a loaded 2-core machine one example can take
# longer than hypothesis' 200 ms default deadline, which would fail a correct test.
hypothesis_settings.register_profile("phoenix", deadline=None)
hypothesis_settings.load_profile("phoenix")

TEST_SECRETS = {
    "PHOENIX__SECURITY__WEBHOOK_SECRET": "unit-test-webhook-secret",
    "PHOENIX__SECURITY__API_KEYS": '["unit-test-api-key-long-enough-24"]',
    "PHOENIX__MESSAGE_QUEUE__PASSWORD": "unit-test-password",
    "PHOENIX__EXCHANGE__API_KEY": "unit-test-exchange-key",
    "PHOENIX__EXCHANGE__API_SECRET": "unit-test-exchange-secret",
    # unit tests share one Redis: no per-client API-key lockout across them
    "PHOENIX__SECURITY__AUTH_FAILURE_LIMIT": "0",
}


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A clean configuration: config.yaml and test secrets only.

    Every ``PHOENIX*`` variable of the calling environment (scripts/test exports the
    test system's) and the developer's ``.env`` are hidden, so unit tests see defaults.
    """
    from shared.settings import get_settings

    for key in [k for k in os.environ if k.startswith("PHOENIX")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PHOENIX_DOTENV", os.devnull + ".absent")
    for key, value in TEST_SECRETS.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield {k: os.environ[k] for k in TEST_SECRETS}
    get_settings.cache_clear()
