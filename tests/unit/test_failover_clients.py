"""Clients that ride out a broker failover: a RabbitMQ node list, Sentinel retries, and the
durable consumer retrying (not dead-lettering) what a failover makes fail for a moment."""

from __future__ import annotations

import pytest
from amqp.exceptions import MessageNacked
from kombu.exceptions import OperationalError as KombuOperationalError
from nameko.exceptions import RemoteError

from shared.consumer import is_retryable
from shared.redis_conn import SENTINEL_RETRIES, redis_client
from shared.settings import ConfigError, RedisStreamsSettings, load_settings


def test_one_node_keeps_the_plain_uri(secrets_env: dict[str, str]) -> None:
    mq = load_settings().message_queue

    assert ";" not in mq.amqp_uri and mq.amqp_uri.endswith("@127.0.0.1:5672/%2Ftrading")
    assert mq.nodes() == (("127.0.0.1", 5672),)


def test_a_node_list_becomes_kombus_failover_uri(secrets_env: dict[str, str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHOENIX__MESSAGE_QUEUE__HOSTS", '["mq-1:5672", "mq-2:5673"]')

    uri = load_settings().message_queue.amqp_uri

    first, second = uri.split(";")
    assert first.endswith("@mq-1:5672/%2Ftrading") and second.endswith("@mq-2:5673/%2Ftrading")
    assert first.split("@")[0] == second.split("@")[0]  # same credentials on every node


@pytest.mark.parametrize("hosts", ['["mq-1"]', '["mq-1:notaport"]', '[":5672"]',
                                   '["mq-1:70000"]'])
def test_a_node_without_host_and_port_is_refused(secrets_env: dict[str, str],
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 hosts: str) -> None:
    monkeypatch.setenv("PHOENIX__MESSAGE_QUEUE__HOSTS", hosts)

    with pytest.raises(ConfigError, match="message_queue.hosts"):
        load_settings()


def test_queue_type_is_classic_or_quorum(secrets_env: dict[str, str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().message_queue.queue_type == "classic"
    monkeypatch.setenv("PHOENIX__MESSAGE_QUEUE__QUEUE_TYPE", "stream")
    with pytest.raises(ConfigError, match="queue_type"):
        load_settings()


def test_sentinel_clients_retry_for_as_long_as_a_failover_takes() -> None:
    settings = RedisStreamsSettings(sentinels=("127.0.0.1:1",))

    client = redis_client(settings, socket_connect_timeout=0.1)

    retry = client.connection_pool.connection_kwargs["retry"]
    assert retry._retries == SENTINEL_RETRIES
    total = sum(retry._backoff.compute(n) for n in range(1, SENTINEL_RETRIES + 1))
    assert 5.0 <= total <= 10.0  # longer than a Sentinel failover (~3 s measured)


def test_a_direct_client_keeps_redis_pys_own_retry() -> None:
    client = redis_client(RedisStreamsSettings(url="redis://127.0.0.1:1/0"))

    retry = client.connection_pool.connection_kwargs.get("retry")
    assert retry is None or retry._retries != SENTINEL_RETRIES


@pytest.mark.parametrize("exc", [
    KombuOperationalError("connection lost while publishing"),
    MessageNacked(),
    ConnectionResetError(),
    RemoteError("ConnectionError", "Error 111 connecting to 127.0.0.1:6380."),
    RemoteError("MasterNotFoundError", "No master found for 'phoenix95'"),
    RemoteError("OperationalError", "broker connection lost"),
])
def test_a_failover_failure_is_retried(exc: Exception) -> None:
    assert is_retryable(exc)


@pytest.mark.parametrize("exc", [
    ValueError("bad payload"),
    KeyError("symbol"),
    RemoteError("ValueError", "bad payload"),
    RemoteError("RiskRejected", "position already open"),
])
def test_a_poison_message_is_not_retried(exc: Exception) -> None:
    assert not is_retryable(exc)


def test_a_wrapped_broker_error_is_retried() -> None:
    try:
        try:
            raise KombuOperationalError("lost")
        except KombuOperationalError as inner:
            raise RuntimeError("publishing the next stage failed") from inner
    except RuntimeError as outer:
        assert is_retryable(outer)


def test_the_stream_consumer_reads_through_sentinel(secrets_env: dict[str, str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A consumer pinned to the first master's address would read a replica forever after
    a failover (XREADGROUP is a write: refused there)."""
    from unittest.mock import Mock

    from redis.sentinel import SentinelConnectionPool

    from shared.streams import RedisStreamConsumer

    monkeypatch.setenv("PHOENIX__REDIS_STREAMS__SENTINELS", '["127.0.0.1:1"]')
    consumer = RedisStreamConsumer("market:stream", "g")
    consumer.container = Mock(service_name="risk")
    consumer.setup()
    consumer.start()

    pool = consumer.conn().connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "phoenix95"
    consumer.kill()
