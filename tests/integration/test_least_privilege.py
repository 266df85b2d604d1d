"""Per-process broker users: each may do what its process does and is refused the rest.

The users and grants are the ones scripts/up provisions (scripts/grants.py), applied with
rabbitmqctl to a throw-away vhost and with ACL SETUSER (unique user names) to Redis.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import redis
from amqp.exceptions import AccessRefused
from kombu import Connection, Exchange, Queue

from scripts import grants, infra, lib, provision
from shared import names
from shared.settings import Settings, load_settings

pytestmark = pytest.mark.integration
REDIS_URL = "redis://127.0.0.1:6379/14"


def _settings(vhost: str, prefix: str) -> Settings:
    return load_settings(message_queue={"virtual_host": vhost, "username": prefix,
                                        "password": "admin-unused"},
                         redis_streams={"url": REDIS_URL})


def _secrets() -> dict[str, str]:
    return {k: gen() for k, gen in provision.SECRET_GENERATORS.items()}


@pytest.fixture(scope="module")
def stack(secrets_module_env: None) -> Iterator[tuple[Settings, dict[str, dict[str, str]]]]:
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is needed to create the users")
    prefix = f"p95lp_{uuid.uuid4().hex[:8]}"
    vhost = f"/phoenix95_lp_{uuid.uuid4().hex[:8]}"
    lib.run_quiet(["rabbitmqctl", "-q", "add_vhost", vhost])
    lib.run_quiet(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest",
                   ".*", ".*", ".*"])
    uri = f"amqp://guest:guest@127.0.0.1:5672/{quote(vhost, safe='')}"
    try:
        settings = _settings(vhost, prefix)
        envs = provision.identity_envs(settings, _secrets())
        guest = load_settings(message_queue={"virtual_host": vhost, "username": "guest",
                                             "password": "guest"})
        infra.declare_topology(guest)
        with Connection(uri) as conn:  # what the services declare when they start
            channel = conn.channel()
            Exchange("nameko-rpc", type="topic", durable=True, channel=channel).declare()
        grants.apply_rabbit(settings, envs)
        try:
            yield settings, envs
        finally:
            for kind in grants.RABBIT_KINDS:
                lib.run_quiet(["rabbitmqctl", "-q", "delete_user",
                               envs[kind]["PHOENIX__MESSAGE_QUEUE__USERNAME"]])
    finally:
        lib.run_quiet(["rabbitmqctl", "-q", "delete_vhost", vhost])


def _uri(settings: Settings, env: dict[str, str]) -> str:
    as_user = settings.message_queue.model_copy(update={
        "username": env["PHOENIX__MESSAGE_QUEUE__USERNAME"],
        "password": load_settings(message_queue={
            "password": env["PHOENIX__MESSAGE_QUEUE__PASSWORD"]}).message_queue.password})
    return as_user.amqp_uri


def _publish(settings: Settings, env: dict[str, str], exchange: str, key: str) -> None:
    with Connection(_uri(settings, env), transport_options={"confirm_publish": True}) as conn:
        producer = conn.Producer()
        producer.publish({"probe": True}, exchange=exchange, routing_key=key,
                         serializer="json", retry=False)


def _consume(settings: Settings, env: dict[str, str], queue: str) -> None:
    with Connection(_uri(settings, env)) as conn:
        channel = conn.channel()
        tag = channel.basic_consume(queue, callback=lambda *a: None)
        channel.basic_cancel(tag)


@pytest.mark.parametrize("kind", ["notify", "risk", "dashboard", "telegram"])
def test_only_the_trade_path_may_publish_a_trade_intent(stack: Any, kind: str) -> None:
    settings, envs = stack
    with pytest.raises(AccessRefused):
        _publish(settings, envs[kind], names.SIGNALS_EXCHANGE, names.TRADE_KEY)


def test_execute_may_queue_a_trade_but_not_a_signal(stack: Any) -> None:
    settings, envs = stack
    _publish(settings, envs["execute"], names.SIGNALS_EXCHANGE, names.TRADE_KEY)
    with pytest.raises(AccessRefused):
        _publish(settings, envs["execute"], names.SIGNALS_EXCHANGE, names.SIGNAL_KEY)


@pytest.mark.parametrize("kind,queue", [
    ("brain", names.TRADE_QUEUE), ("execute", names.SIGNAL_QUEUE),
    ("notify", names.TRADE_QUEUE), ("dashboard", names.RISK_ALERT_QUEUE),
    ("telegram", names.TRADE_QUEUE + names.DLQ_SUFFIX), ("risk", names.SIGNAL_QUEUE),
])
def test_a_process_cannot_consume_a_queue_that_is_not_its_own(stack: Any, kind: str,
                                                               queue: str) -> None:
    settings, envs = stack
    with pytest.raises(AccessRefused):
        _consume(settings, envs[kind], queue)


def test_each_consumer_reads_its_own_queue(stack: Any) -> None:
    settings, envs = stack
    for kind, queue in (("brain", names.SIGNAL_QUEUE), ("execute", names.TRADE_QUEUE),
                        ("notify", names.RISK_ALERT_QUEUE)):
        _consume(settings, envs[kind], queue)


@pytest.mark.parametrize("kind,method", [
    ("dashboard", "execute.close_all"), ("notify", "execute.close"),
    ("dashboard", "risk.set_state"), ("brain", "execute.close_all"),
    ("telegram", "brain.analyze"), ("risk", "risk.set_state"),
])
def test_rpc_calls_outside_a_process_s_needs_are_refused(stack: Any, kind: str,
                                                         method: str) -> None:
    settings, envs = stack
    with pytest.raises(AccessRefused):
        _publish(settings, envs[kind], "nameko-rpc", method)


def test_rpc_calls_a_process_needs_are_allowed(stack: Any) -> None:
    settings, envs = stack
    for kind, method in (("telegram", "execute.close_all"), ("dashboard", "risk.status"),
                         ("brain", "risk.check"), ("risk", "execute.rearm"),
                         ("execute", "risk.set_state"), ("execute", str(uuid.uuid4()))):
        _publish(settings, envs[kind], "nameko-rpc", method)


def test_standalone_callers_use_reply_queues_named_after_them(stack: Any) -> None:
    settings, envs = stack
    with Connection(_uri(settings, envs["dashboard"])) as conn:
        channel = conn.channel()
        Queue(f"rpc.reply-dashboard-{uuid.uuid4()}", channel=channel,
              exchange=Exchange("nameko-rpc", type="topic", durable=True),
              routing_key=str(uuid.uuid4()), auto_delete=True).declare()
    with pytest.raises(AccessRefused), Connection(_uri(settings, envs["dashboard"])) as conn:
        Queue(f"rpc.reply-telegram-{uuid.uuid4()}", channel=conn.channel(),
              auto_delete=True).declare()


# --------------------------------------------------------------------------- Redis


@pytest.fixture(scope="module")
def redis_users(secrets_module_env: None) -> Iterator[dict[str, redis.Redis]]:
    prefix = f"p95lp_{uuid.uuid4().hex[:8]}"
    settings = _settings("/unused", prefix)
    envs = provision.identity_envs(settings, _secrets())
    grants.apply_redis(settings, envs)
    clients = {kind: redis.Redis.from_url(
        REDIS_URL, username=envs[kind]["PHOENIX__REDIS_STREAMS__USERNAME"],
        password=envs[kind]["PHOENIX__REDIS_STREAMS__PASSWORD"], decode_responses=True)
        for kind in grants.REDIS_KINDS}
    try:
        yield clients
    finally:
        admin = redis.Redis.from_url(REDIS_URL)
        for kind, client in clients.items():
            client.close()
            admin.execute_command("ACL", "DELUSER",
                                  envs[kind]["PHOENIX__REDIS_STREAMS__USERNAME"])
        admin.close()


@pytest.mark.parametrize("kind,key", [
    ("notify", names.RISK_RESERVATIONS_KEY), ("brain", names.STATE_PRICES_KEY),
    ("execute", names.TELEGRAM_CONFIRM_PREFIX + "x"), ("risk", names.IDEMPOTENCY_KEY_PREFIX + "x"),
    ("telegram", names.IDEMPOTENCY_KEY_PREFIX + "x"), ("dashboard", names.STATE_PRICES_KEY),
    ("notify", names.STATE_BALANCE_KEY),
])
def test_a_redis_user_cannot_write_outside_its_keys(redis_users: Any, kind: str,
                                                    key: str) -> None:
    with pytest.raises(redis.exceptions.NoPermissionError):
        redis_users[kind].set(key, "forged")


def test_redis_users_write_their_own_keys_and_read_the_state(redis_users: Any) -> None:
    owned = {"feed": names.STATE_BALANCE_KEY, "brain": names.IDEMPOTENCY_KEY_PREFIX + "lp",
             "risk": names.RISK_RESERVATIONS_KEY + "-lp",
             "execute": names.SYMBOL_LOCK_PREFIX + "lp",
             "telegram": names.TELEGRAM_CONFIRM_PREFIX + "lp"}
    for kind, key in owned.items():
        redis_users[kind].set(key, "1", ex=60)
        assert redis_users["dashboard"].get(key) == "1"
        redis_users[kind].delete(key)
    with pytest.raises(redis.exceptions.NoPermissionError):
        redis_users["dashboard"].xadd(names.SIGNAL_STREAM, {"forged": "1"})
