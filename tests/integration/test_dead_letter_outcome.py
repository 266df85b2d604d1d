"""A dead-lettered trade intent gets its one failed outcome (issue 10 item 8).

Execute's ``trade_dead_lettered`` handler (what ``trade_execution.failed`` delivers) on the
real engine: the paper exchange in-process, SQLite and PostgreSQL for the book (see
conftest.py). Telemetry, the bus and the event dispatcher are the service's boundaries,
recorded. The RabbitMQ side (a dead letter reaches the handler beside the .dlq) is
tests/integration/test_dead_letter_topology.py."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import intent
from tests.unit.test_execute_service import FakeBus, FakeTelemetry

pytestmark = pytest.mark.integration

REASON = "gave up after 3 retries: ccxt.base.errors.NetworkError: down"


@pytest.fixture
def service(make_engine, secrets_env) -> Any:
    from nameko.testing.services import worker_factory

    from nameko_services.execute.service import ExecuteService
    from shared.settings import load_settings

    return worker_factory(ExecuteService, engine=make_engine(), telemetry=FakeTelemetry(),
                          bus=FakeBus(), config=load_settings())


def _failed(service: Any) -> list[tuple[str, str]]:
    return [(r[2], r[3]["reason"]) for r in service.telemetry.records
            if r[1] == "trade_failed"]


def _dispatched(service: Any) -> list[tuple[str, dict]]:
    return [c.args for c in service.dispatch.call_args_list]


def test_a_dead_lettered_intent_gets_one_trade_failed_even_when_redelivered(service):
    it = intent()

    service.trade_dead_lettered(it.wire(), REASON)
    service.trade_dead_lettered(it.wire(), REASON)  # the handler's message redelivered

    assert _failed(service) == [(it.signal_id, f"dead-lettered: {REASON}")]
    [(event, payload)] = _dispatched(service)  # releases risk's reservation
    assert (event, payload["signal_id"], payload["symbol"]) == \
        ("trade_failed", it.signal_id, it.symbol)
    assert service.bus.published == []  # the consumer that dead-lettered it alerted
    # the book says so too: a replay of the intent is a failure, not a late trade
    assert service.engine.open(it).status == "failed"
    assert service.bus.published == []


def test_an_intent_whose_entry_filled_before_it_was_dead_lettered_is_not_a_failure(
        service):
    it = intent()
    assert service.engine.open(it).status == "opened"

    service.trade_dead_lettered(it.wire(), REASON)

    assert _failed(service) == []
    service.dispatch.assert_not_called()


def test_a_pending_entry_that_never_reached_the_exchange_is_failed(service):
    from nameko_services.execute.engine import intent_ids
    from nameko_services.execute.store import OrderRecord

    it = intent()
    # recorded, then the process died before sending: the exchange has no such order
    service.engine.store.claim(OrderRecord(intent_ids(it)["entry"], it.signal_id, it.symbol,
                                           "entry", "BUY", "MARKET", it.quantity))

    service.trade_dead_lettered(it.wire(), REASON)

    assert _failed(service) == [(it.signal_id, f"dead-lettered: {REASON}")]


def test_a_dead_letter_that_is_not_an_intent_is_only_logged(service):
    service.trade_dead_lettered({"type": "trade_intent", "symbol": 1}, "poison")
    service.trade_dead_lettered("not json", "poison")

    assert service.telemetry.records == []
    service.dispatch.assert_not_called()
