"""rabbitmq/definitions.json must declare exactly the topology shared.names describes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared import names

DEFINITIONS = Path(__file__).resolve().parents[2] / "rabbitmq" / "definitions.json"
VHOST = "/trading"
USER = "phoenix95"


@pytest.fixture(scope="module")
def defs() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DEFINITIONS.read_text(encoding="utf-8"))
    return data


def test_vhost_user_and_permissions(defs: dict[str, Any]) -> None:
    assert [v["name"] for v in defs["vhosts"]] == [VHOST]
    assert [u["name"] for u in defs["users"]] == [USER]
    assert [
        (p["user"], p["vhost"], p["configure"], p["write"], p["read"])
        for p in defs["permissions"]
    ] == [(USER, VHOST, ".*", ".*", ".*")]


def test_user_has_no_password_material(defs: dict[str, Any]) -> None:
    # The password comes from the environment (.env), never from the repository.
    for user in defs["users"]:
        assert not {"password", "password_hash"} & set(user)


def test_every_object_lives_in_the_trading_vhost(defs: dict[str, Any]) -> None:
    for kind in ("exchanges", "queues", "bindings"):
        assert {item["vhost"] for item in defs[kind]} == {VHOST}, kind


def test_exchanges_match_names(defs: dict[str, Any]) -> None:
    declared = {e["name"]: e["type"] for e in defs["exchanges"]}
    assert declared == names.EXCHANGE_TYPES
    assert all(e["durable"] and not e["auto_delete"] for e in defs["exchanges"])
    assert names.EXCHANGE_TYPES[names.DEAD_LETTER_EXCHANGE] == "direct"


def test_work_queues_have_dead_letter_arguments(defs: dict[str, Any]) -> None:
    queues = {q["name"]: q for q in defs["queues"]}
    for queue in names.QUEUE_BINDINGS:
        assert queues[queue]["durable"] is True
        assert queues[queue]["auto_delete"] is False
        assert queues[queue]["arguments"] == names.queue_arguments(queue)


def test_queue_set_is_work_queues_plus_their_retry_and_dead_letter_queues(
        defs: dict[str, Any]) -> None:
    expected = set(names.QUEUE_BINDINGS) | {q + names.DLQ_SUFFIX for q in names.QUEUE_BINDINGS}
    expected |= {q + names.RETRY_SUFFIX for q in names.QUEUE_BINDINGS}
    assert {q["name"] for q in defs["queues"]} == expected
    for queue in names.QUEUE_BINDINGS:
        dlq = next(q for q in defs["queues"] if q["name"] == queue + names.DLQ_SUFFIX)
        assert dlq["durable"] is True
        assert not dlq.get("arguments")


def test_retry_queues_dead_letter_back_to_their_work_queue(defs: dict[str, Any]) -> None:
    queues = {q["name"]: q for q in defs["queues"]}
    for queue in names.QUEUE_BINDINGS:
        retry = queues[queue + names.RETRY_SUFFIX]
        assert retry["durable"] is True and retry["auto_delete"] is False
        # the default exchange routes by queue name: an expired retry lands on the work queue
        assert retry["arguments"] == {"x-dead-letter-exchange": "",
                                      "x-dead-letter-routing-key": queue}
        assert retry["arguments"] == names.retry_queue_arguments(queue)
        kq = names.kombu_retry_queue(queue)
        assert kq.name == retry["name"]
        assert kq.queue_arguments == retry["arguments"]  # type: ignore[attr-defined]


def _bindings(defs: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (b["source"], b["destination"], b["routing_key"])
        for b in defs["bindings"]
        if b["destination_type"] == "queue"
    }


def test_bindings_match_queue_bindings_and_dlx(defs: dict[str, Any]) -> None:
    expected = {(ex, queue, key) for queue, (ex, _type, key) in names.QUEUE_BINDINGS.items()}
    expected |= {
        (names.DEAD_LETTER_EXCHANGE, queue + names.DLQ_SUFFIX, queue)
        for queue in names.QUEUE_BINDINGS
    }
    assert _bindings(defs) == expected
    assert len(defs["bindings"]) == len(expected)


def test_binding_exchange_types_agree(defs: dict[str, Any]) -> None:
    types = {e["name"]: e["type"] for e in defs["exchanges"]}
    for exchange, exchange_type, _key in names.QUEUE_BINDINGS.values():
        assert types[exchange] == exchange_type


def test_brief_queue_keys() -> None:
    assert names.QUEUE_BINDINGS[names.SIGNAL_QUEUE][2] == "signal.process"
    assert names.QUEUE_BINDINGS[names.TRADE_QUEUE][2] == "trade.execute"
    assert names.QUEUE_BINDINGS[names.RISK_ALERT_QUEUE][2] == "risk.alert"


def test_kombu_declarations_match_definitions(defs: dict[str, Any]) -> None:
    queues = {q["name"]: q for q in defs["queues"]}
    for queue in names.QUEUE_BINDINGS:
        kq = names.kombu_queue(queue)
        assert kq.queue_arguments == queues[queue]["arguments"]  # type: ignore[attr-defined]
        assert kq.exchange.type == names.EXCHANGE_TYPES[kq.exchange.name]
        dlq = names.kombu_dead_letter_queue(queue)
        assert dlq.name in queues
        assert (dlq.exchange.name, dlq.name, dlq.routing_key) in _bindings(defs)


def test_streams_groups_and_topics_follow_the_brief() -> None:
    for stream in ("market:stream", "signal:stream", "trade:stream", "risk:stream"):
        assert stream in names.STREAM_GROUPS
    groups = {g for gs in names.STREAM_GROUPS.values() for g in gs}
    assert {"brain_processors", "risk_processors", "execution_processors"} <= groups
    assert names.TOPIC_PARTITIONS == {"phoenix95_signals": 3, "trading_events": 3,
                                      "risk_events": 2}
    assert set(names.TELEMETRY_TOPIC_OF.values()) <= set(names.TOPIC_PARTITIONS)


def test_queues_are_quorum_through_the_vhosts_default_type(defs: dict[str, Any]) -> None:
    """The vhost makes every durable queue a quorum queue: ours and nameko's RPC and event
    queues, which nameko declares without arguments. No queue names its type: RabbitMQ
    refuses a redeclare whose explicit x-queue-type differs from the queue's, so an explicit
    type here would break every vhost created classic (docs/deployment.md, the HA lab)."""
    assert defs["vhosts"][0]["metadata"]["default_queue_type"] == "quorum"
    assert all("x-queue-type" not in (q.get("arguments") or {}) for q in defs["queues"])
