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


def _yaml_without_phoenix_threshold(tmp_path, monkeypatch):
    import yaml

    from shared.settings import ROOT

    data = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    data.get("phoenix_95", {}).pop("threshold", None)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    monkeypatch.setenv("PHOENIX_CONFIG", str(path))


def test_trading_phoenix_95_threshold_sets_the_phoenix_threshold(
        secrets_env, monkeypatch, tmp_path):
    _yaml_without_phoenix_threshold(tmp_path, monkeypatch)
    monkeypatch.setenv("PHOENIX__TRADING__PHOENIX_95_THRESHOLD", "0.6")

    settings = load_settings()

    assert settings.phoenix_95.threshold == 0.6


def test_threshold_alias_agreeing_with_phoenix_threshold_is_accepted(secrets_env, monkeypatch):
    monkeypatch.setenv("PHOENIX__TRADING__PHOENIX_95_THRESHOLD", "0.45")  # config.yaml: 0.45

    assert load_settings().phoenix_95.threshold == 0.45


def test_threshold_alias_disagreeing_with_phoenix_threshold_is_a_config_error(
        secrets_env, monkeypatch):
    monkeypatch.setenv("PHOENIX__TRADING__PHOENIX_95_THRESHOLD", "0.7")
    monkeypatch.setenv("PHOENIX__PHOENIX_95__THRESHOLD", "0.5")

    with pytest.raises(ConfigError) as err:
        load_settings()

    message = str(err.value)
    assert "\n" not in message
    assert "trading.phoenix_95_threshold=0.7" in message
    assert "phoenix_95.threshold=0.5" in message


def test_threshold_alias_out_of_range_is_rejected(secrets_env, monkeypatch):
    monkeypatch.setenv("PHOENIX__TRADING__PHOENIX_95_THRESHOLD", "1.5")

    with pytest.raises(ConfigError, match="trading.phoenix_95_threshold"):
        load_settings()


def test_telegram_is_active_with_token_and_chat_id(secrets_env, monkeypatch):
    monkeypatch.setenv("PHOENIX__TELEGRAM__TOKEN", "123:abc")
    monkeypatch.setenv("PHOENIX__TELEGRAM__CHAT_ID", "42")

    telegram = load_settings().telegram

    assert telegram.enabled is True
    assert telegram.active is True


def test_telegram_enabled_false_keeps_it_off_despite_a_token(secrets_env, monkeypatch):
    monkeypatch.setenv("PHOENIX__TELEGRAM__TOKEN", "123:abc")
    monkeypatch.setenv("PHOENIX__TELEGRAM__CHAT_ID", "42")
    monkeypatch.setenv("PHOENIX__TELEGRAM__ENABLED", "false")

    assert load_settings().telegram.active is False


def test_telegram_without_a_chat_id_is_off(secrets_env, monkeypatch):
    monkeypatch.setenv("PHOENIX__TELEGRAM__TOKEN", "123:abc")

    assert load_settings().telegram.active is False


def test_trusted_proxies_are_addresses_or_networks(secrets_env: dict[str, str]) -> None:
    from shared.settings import ConfigError, load_settings

    ok = load_settings(security={"trusted_proxies": ["172.30.95.10", "10.244.0.0/16"]})
    assert ok.security.trusted_proxies == ("172.30.95.10", "10.244.0.0/16")
    with pytest.raises(ConfigError, match="trusted_proxies"):
        load_settings(security={"trusted_proxies": ["ingress-nginx"]})
