from __future__ import annotations

import pytest

from shared.settings import ConfigError, load_settings


def test_environment_overrides_yaml_per_section_and_key(secrets_env, monkeypatch):
    monkeypatch.setenv("PHOENIX__TRADING__MIN_CONFIDENCE", "0.3")
    monkeypatch.setenv("PHOENIX__SECURITY__API_KEYS", '["k1","k2"]')

    settings = load_settings()

    assert settings.trading.min_confidence == 0.3
    assert settings.security.api_key_values() == {"k1", "k2"}
    assert settings.leverage.leverage == 20  # untouched keys keep config.yaml's value


def test_defaults_match_the_brief(secrets_env):
    s = load_settings()

    assert s.trading.allowed_symbols == ("BTCUSDT", "ETHUSDT", "BNBUSDT", "ADAUSDT", "DOGEUSDT")
    assert (s.trading.min_confidence, s.phoenix_95.threshold, s.phoenix_95.execute_threshold) == (
        0.25, 0.45, 0.85)
    assert (s.leverage.leverage, s.leverage.margin_mode) == (20, "ISOLATED")
    assert (s.leverage.stop_loss_percent, s.leverage.take_profit_percent) == (0.02, 0.02)
    assert s.message_queue.virtual_host == "/trading"
    assert s.telegram.api_base_url == "https://api.telegram.org/bot"
    assert s.exchange.mode == "paper"


def test_bad_value_is_one_line_naming_key_value_and_rule(secrets_env, monkeypatch):
    monkeypatch.setenv("PHOENIX__TRADING__MIN_CONFIDENCE", "lots")

    with pytest.raises(ConfigError) as err:
        load_settings()

    message = str(err.value)
    assert "\n" not in message
    assert "trading.min_confidence='lots'" in message
    assert "PHOENIX__TRADING__MIN_CONFIDENCE" in message
    assert "valid number" in message


def test_misspelt_key_is_refused_rather_than_ignored(secrets_env, monkeypatch):
    monkeypatch.setenv("PHOENIX__LEVERAGE__LEVERAGES", "50")

    with pytest.raises(ConfigError, match="leverage.leverages"):
        load_settings()


def test_leverage_above_binance_maximum_is_refused(secrets_env, monkeypatch):
    monkeypatch.setenv("PHOENIX__LEVERAGE__LEVERAGE", "200")

    with pytest.raises(ConfigError, match="less than or equal to 125"):
        load_settings()


def test_missing_secret_names_its_environment_variable(secrets_env, monkeypatch):
    monkeypatch.setenv("PHOENIX__SECURITY__WEBHOOK_SECRET", "")
    monkeypatch.setenv("PHOENIX_DOTENV", "/nonexistent/.env")

    with pytest.raises(ConfigError, match="PHOENIX__SECURITY__WEBHOOK_SECRET"):
        load_settings()


def test_live_mode_refuses_a_short_webhook_secret(secrets_env, monkeypatch):
    monkeypatch.setenv("PHOENIX__EXCHANGE__MODE", "live")
    monkeypatch.setenv("PHOENIX__SECURITY__WEBHOOK_SECRET", "short")

    with pytest.raises(ConfigError, match="at least 16 characters"):
        load_settings()


def test_unknown_exchange_mode_lists_the_allowed_ones(secrets_env, monkeypatch):
    monkeypatch.setenv("PHOENIX__EXCHANGE__MODE", "testnet")

    with pytest.raises(ConfigError, match="'paper', 'demo' or 'live'"):
        load_settings()


def test_secrets_never_appear_in_repr(secrets_env):
    settings = load_settings()

    assert secrets_env["PHOENIX__SECURITY__WEBHOOK_SECRET"] not in repr(settings)
    assert secrets_env["PHOENIX__EXCHANGE__API_SECRET"] not in repr(settings)


def test_amqp_uri_quotes_the_vhost(secrets_env):
    assert load_settings().message_queue.amqp_uri.endswith("@127.0.0.1:5672/%2Ftrading")


def test_demo_mode_refuses_the_example_placeholder_secrets(secrets_env, monkeypatch):
    monkeypatch.setenv("PHOENIX__EXCHANGE__MODE", "demo")
    monkeypatch.setenv("PHOENIX__EXCHANGE__API_SECRET", "change-me")

    with pytest.raises(ConfigError, match="exchange.api_secret is still the .env.example"):
        load_settings()
