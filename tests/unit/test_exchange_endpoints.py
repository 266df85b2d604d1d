"""Endpoints are configuration: every mode runs the same client code, only URLs differ."""

from __future__ import annotations

import asyncio

import pytest

from shared.exchange import make_exchange, make_pro_exchange, rest_origin, ws_base
from shared.settings import ConfigError, load_settings

LIVE_SECRETS = {"webhook_secret": "a-long-enough-webhook-secret",
                "api_keys": ["a-live-api-key-of-24-chars-or-more"]}


def test_paper_mode_points_rest_and_websocket_at_the_local_paper_exchange(secrets_env):
    settings = load_settings(paper_exchange={"host": "127.0.0.1", "port": 8110})

    client = make_exchange(settings)

    assert rest_origin(settings) == "http://127.0.0.1:8110"
    assert ws_base(settings) == "ws://127.0.0.1:8110/ws"
    assert client.urls["api"]["fapiPrivate"] == "http://127.0.0.1:8110/fapi/v1"
    assert client.urls["api"]["fapiPrivateV3"] == "http://127.0.0.1:8110/fapi/v3"


def test_live_mode_without_urls_uses_binance_and_its_own_error_table(secrets_env):
    settings = load_settings(exchange={"mode": "live"}, security=LIVE_SECRETS)

    client = make_exchange(settings)

    assert rest_origin(settings) is None and ws_base(settings) is None
    assert client.urls["api"]["fapiPrivate"].startswith("https://fapi.binance.com/")


def test_live_mode_can_be_pointed_at_any_binance_compatible_endpoint(secrets_env):
    settings = load_settings(
        exchange={"mode": "live", "rest_url": "http://127.0.0.1:9110/",
                  "ws_url": "ws://127.0.0.1:9110/ws"}, security=LIVE_SECRETS)

    client = make_exchange(settings)

    async def pro_urls() -> tuple[str, str]:
        pro = make_pro_exchange(settings)
        try:
            return pro.urls["api"]["ws"]["linear"], pro.urls["api"]["fapiPrivate"]
        finally:
            await pro.close()

    ws, private = asyncio.run(pro_urls())
    assert client.urls["api"]["fapiPrivate"] == "http://127.0.0.1:9110/fapi/v1"
    assert ws == "ws://127.0.0.1:9110/ws"
    assert private == "http://127.0.0.1:9110/fapi/v1"
    # ccxt maps the USD-M error codes only for Binance's hosts; a local URL needs them too
    assert client.exceptions["exact"]["-2019"].__name__ == "InsufficientFunds"


def test_demo_mode_uses_binance_demo_trading(secrets_env):
    settings = load_settings(exchange={"mode": "demo"}, security=LIVE_SECRETS)

    client = make_exchange(settings)

    assert "demo-fapi.binance.com" in client.urls["api"]["fapiPrivate"]


@pytest.mark.parametrize(("key", "value"), [("rest_url", "ws://x"), ("ws_url", "http://x")])
def test_an_endpoint_with_the_wrong_scheme_is_a_config_error(secrets_env, key, value):
    with pytest.raises(ConfigError, match=f"exchange.{key}"):
        load_settings(exchange={key: value})
