"""Security settings: key length, TLS options for AMQP and Kafka, Telegram users, dashboard."""

from __future__ import annotations

import json
import ssl

import pytest

from shared.settings import ConfigError, load_settings


def _live(monkeypatch: pytest.MonkeyPatch, keys: list[str]) -> None:
    monkeypatch.setenv("PHOENIX__EXCHANGE__MODE", "demo")
    monkeypatch.setenv("PHOENIX__SECURITY__API_KEYS", json.dumps(keys))


def test_short_api_key_is_refused_outside_paper_mode(secrets_env, monkeypatch) -> None:
    _live(monkeypatch, ["x" * 40, "short-key"])
    with pytest.raises(ConfigError, match="at least 24 characters"):
        load_settings()


def test_long_api_keys_are_accepted_outside_paper_mode(secrets_env, monkeypatch) -> None:
    _live(monkeypatch, ["x" * 24, "y" * 43])
    assert len(load_settings().security.api_keys) == 2


def test_generated_api_keys_meet_the_minimum_length() -> None:
    from scripts.lib import SECRET_GENERATORS

    keys = json.loads(SECRET_GENERATORS["PHOENIX__SECURITY__API_KEYS"]().strip("'"))
    assert all(len(k) >= 24 for k in keys)


def test_amqp_tls_switches_the_scheme_and_gives_nameko_ssl_options(secrets_env,
                                                                    monkeypatch) -> None:
    monkeypatch.setenv("PHOENIX__MESSAGE_QUEUE__SSL", "true")
    monkeypatch.setenv("PHOENIX__MESSAGE_QUEUE__PORT", "5671")
    monkeypatch.setenv("PHOENIX__MESSAGE_QUEUE__SSL_CA_FILE", "/etc/phoenix/ca.pem")
    from nameko_services.runner import nameko_config

    settings = load_settings()
    config = nameko_config(settings, "risk")
    assert settings.message_queue.amqp_uri.startswith("amqps://")
    assert config["AMQP_SSL"] == {"cert_reqs": ssl.CERT_REQUIRED,
                                  "ca_certs": "/etc/phoenix/ca.pem"}


def test_plain_amqp_by_default_has_no_ssl_options(secrets_env) -> None:
    from nameko_services.runner import nameko_config

    settings = load_settings()
    assert settings.message_queue.amqp_uri.startswith("amqp://")
    assert "AMQP_SSL" not in nameko_config(settings, "risk")


def test_kafka_sasl_ssl_reaches_the_producer_config(secrets_env, monkeypatch) -> None:
    monkeypatch.setenv("PHOENIX__KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("PHOENIX__KAFKA__SSL_CA_LOCATION", "/etc/phoenix/kafka-ca.pem")
    monkeypatch.setenv("PHOENIX__KAFKA__SASL_USERNAME", "phoenix95")
    monkeypatch.setenv("PHOENIX__KAFKA__SASL_PASSWORD", "pw")
    from shared.telemetry import kafka_producer_config

    conf = kafka_producer_config(load_settings())
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["ssl.ca.location"] == "/etc/phoenix/kafka-ca.pem"
    assert conf["ssl.endpoint.identification.algorithm"] == "https"
    assert (conf["sasl.username"], conf["sasl.password"]) == ("phoenix95", "pw")


def test_kafka_config_is_accepted_by_librdkafka(secrets_env, monkeypatch) -> None:
    from confluent_kafka import Producer

    monkeypatch.setenv("PHOENIX__KAFKA__SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("PHOENIX__KAFKA__SSL_ENDPOINT_IDENTIFICATION", "false")
    from shared.telemetry import kafka_producer_config

    Producer(kafka_producer_config(load_settings()))  # raises KafkaException on a bad key


@pytest.mark.parametrize(("raw", "expected"), [("123", (123,)), ("[1, 2]", (1, 2)),
                                               ("[5,6]", (5, 6))])
def test_telegram_allowed_user_ids_from_env(secrets_env, monkeypatch, raw, expected) -> None:
    monkeypatch.setenv("PHOENIX__TELEGRAM__ALLOWED_USER_IDS", raw)
    assert load_settings().telegram.allowed_user_ids == expected


def test_dashboard_password_must_be_a_bcrypt_hash(secrets_env, monkeypatch) -> None:
    monkeypatch.setenv("PHOENIX__DASHBOARD__PASSWORD_HASH", "hunter2")
    with pytest.raises(ConfigError, match="bcrypt"):
        load_settings()


def test_generated_env_gives_a_dashboard_login_that_verifies(secrets_env, monkeypatch,
                                                              tmp_path, capsys) -> None:
    bcrypt = pytest.importorskip("bcrypt")
    from scripts import lib

    for key in [k for k in __import__("os").environ if k.startswith("PHOENIX__")]:
        monkeypatch.delenv(key)
    path = tmp_path / ".env"
    lib.ensure_env_file(path)
    monkeypatch.setenv("PHOENIX_DOTENV", str(path))
    password = capsys.readouterr().out.split("password '", 1)[1].split("'", 1)[0]

    settings = load_settings()

    hashed = settings.dashboard.password_hash.get_secret_value()
    assert bcrypt.checkpw(password.encode(), hashed.encode())
    assert password not in path.read_text()
    assert len(settings.telegram.confirm_secret.get_secret_value()) >= 32
