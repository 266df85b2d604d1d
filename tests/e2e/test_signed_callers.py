"""A broker credential is not enough: unsigned RPCs and unapproved intents are refused."""

from __future__ import annotations

import os
import uuid
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import pytest
from kombu import Connection
from nameko.exceptions import RemoteError

from scripts import lib, provision
from shared.models import Signal, TradeIntent
from shared.names import (
    SIGNAL_QUEUE,
    SIGNALS_EXCHANGE,
    TRADE_KEY,
    TRADE_QUEUE,
    kombu_exchange,
)
from shared.settings import Settings
from shared.signed_rpc import cluster_proxy
from tests.support.dead_letters import take_dead_letter

pytestmark = pytest.mark.e2e


def _stack_secrets() -> dict[str, str]:
    path = os.environ.get("PHOENIX_DOTENV", ".env")
    full = path if os.path.isabs(path) else str(lib.ROOT / path)
    try:
        return lib.parse_env(open(full, encoding="utf-8").read())
    except OSError:
        return {}


def _uri_of(settings: Settings, kind: str) -> str:
    """``kind``'s own broker user (skip on a stack without per-process users)."""
    password = _stack_secrets().get(provision.mq_password_env(kind))
    if not password:
        pytest.skip("the stack runs without per-process broker users")
    mq = settings.message_queue
    return (f"amqp://{quote(f'{mq.username}_{kind}', safe='')}:{quote(password, safe='')}"
            f"@{mq.host}:{mq.port}/{quote(mq.virtual_host, safe='')}")


@pytest.fixture(scope="module")
def brain_uri(settings: Settings) -> str:
    """Brain's own broker user: it may publish on trade_execution (after risk.check)."""
    return _uri_of(settings, "brain")


def _dead_letter(settings: Settings, queue: str, signal_id: str) -> Any:
    """Take the dead letter of ``signal_id`` from ``queue``.dlq (others are put back)."""
    with Connection(settings.message_queue.amqp_uri) as admin:  # operator: reads the DLQ
        return take_dead_letter(admin, queue, lambda p: p.get("signal_id") == signal_id)


def _intent(exchange: Any) -> dict[str, Any]:
    price = Decimal(str(exchange.fetch_ticker("BTC/USDT:USDT")["last"]))
    return TradeIntent(
        signal_id=f"unsigned-{uuid.uuid4().hex[:10]}", idempotency_key=f"e2e:{uuid.uuid4()}",
        symbol="BTCUSDT", side="LONG", quantity=Decimal("0.002"), reference_price=price,
        leverage=20, stop_loss=(price * Decimal("0.98")).quantize(Decimal("0.1")),
        take_profit=(price * Decimal("1.02")).quantize(Decimal("0.1")),
        margin=price * Decimal("0.002") / 20, strategy="e2e").wire()


def test_an_unsigned_intent_on_trade_execution_is_not_traded(settings, exchange, rpc,
                                                             brain_uri):
    body = _intent(exchange)
    with Connection(brain_uri, transport_options={"confirm_publish": True}) as conn:
        conn.Producer().publish(body, exchange=kombu_exchange(SIGNALS_EXCHANGE),
                                routing_key=TRADE_KEY, delivery_mode=2, serializer="json")

    found = _dead_letter(settings, TRADE_QUEUE, body["signal_id"])
    assert found is not None, "the unsigned intent was not dead-lettered"
    assert "unsigned_intent" in found.headers["x-phoenix-error"]
    trades = rpc.execute.trades(200)
    assert body["signal_id"] not in {t["signal_id"] for t in trades}


def test_an_unsigned_state_changing_rpc_is_refused(settings, rpc):
    with cluster_proxy(settings.message_queue.amqp_uri, caller="operator", key="",
                       timeout=30) as unsigned:
        with pytest.raises(RemoteError) as refused:
            unsigned.execute.close_all()
        assert refused.value.exc_type == "CallerRefused"
        with pytest.raises(RemoteError, match="unsigned"):
            unsigned.risk.set_state("HALTED", "e2e: must be refused")
        assert "state" in unsigned.risk.status()  # reads need no signature


def test_a_signed_operator_is_accepted_and_another_caller_name_is_not(settings, rpc):
    assert isinstance(rpc.execute.close_all(), list)
    key = settings.security.signing_key.get_secret_value()
    with cluster_proxy(settings.message_queue.amqp_uri, caller="telegram", key=key,
                       timeout=30) as impostor:  # the operator's key, telegram's name
        with pytest.raises(RemoteError, match="bad_signature"):
            impostor.execute.close_all()


def test_a_signal_dropped_on_signal_processing_by_another_process_is_not_analysed(
        settings, streams):
    """notify may write to the default exchange (its retries): it can route a message to
    any queue by name, but brain analyses only the signals it signed itself."""
    from datetime import UTC, datetime

    signal = Signal(signal_id=f"forged-{uuid.uuid4().hex[:10]}",
                    idempotency_key=f"e2e:{uuid.uuid4()}", symbol="BTCUSDT", action="buy",
                    side="LONG", confidence=0.99, strategy="e2e-forged",
                    received_at=datetime.now(UTC)).wire()
    with Connection(_uri_of(settings, "notify"),
                    transport_options={"confirm_publish": True}) as conn:
        conn.Producer().publish(signal, exchange="", routing_key=SIGNAL_QUEUE,
                                delivery_mode=2, serializer="json")

    found = _dead_letter(settings, SIGNAL_QUEUE, signal["signal_id"])
    assert found is not None, "the forged signal was not dead-lettered"
    assert "CallerRefused: unsigned" in found.headers["x-phoenix-error"]
    scored = [f for _, f in streams.xrevrange("signal:stream", count=500)
              if signal["signal_id"] in str(f) and "signal_scored" in str(f)]
    assert scored == []
