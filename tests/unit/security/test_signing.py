"""Signed caller identity and risk's signed approval (shared/signing.py)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from shared import names, signing
from shared.models import Approval, TradeIntent
from shared.signing import (
    CallerRefused,
    Verifier,
    pair_key,
    sign_approval,
    sign_call,
    verify_approval,
)

OPERATOR_KEY = "operator-own-key"
TELEGRAM_KEY = "telegram-own-key"
NOW = 1_800_000_000.0


def _verifier(receiver: str = names.EXECUTE, clock: float = NOW) -> Verifier:
    keys = {names.OPERATOR: pair_key(OPERATOR_KEY, receiver),
            names.TELEGRAM: pair_key(TELEGRAM_KEY, receiver)}
    return Verifier(receiver, keys, max_age_s=60, clock=lambda: clock)


def _signed(method: str = "close", args: tuple[Any, ...] = ("BTCUSDT",),
            caller: str = names.OPERATOR, key: str = OPERATOR_KEY,
            receiver: str = names.EXECUTE, now: float = NOW) -> str:
    return sign_call(caller, key, receiver, method, args, {}, now=now)


ALLOWED = names.SIGNED_RPCS[(names.EXECUTE, "close")]


def test_a_signed_call_is_verified_as_its_caller() -> None:
    assert _verifier().verify(_signed(), "close", ["BTCUSDT"], {}, ALLOWED) == names.OPERATOR


@pytest.mark.parametrize("header,method,args,reason", [
    (None, "close", ["BTCUSDT"], "unsigned"),
    ("", "close", ["BTCUSDT"], "unsigned"),
    ("garbage", "close", ["BTCUSDT"], "malformed"),
    (_signed(), "close", ["ETHUSDT"], "bad_signature"),  # arguments changed on the way
    (_signed(), "close_all", ["BTCUSDT"], "bad_signature"),  # another method
    (_signed(key="a-guessed-key"), "close", ["BTCUSDT"], "bad_signature"),
    (_signed(caller=names.BRAIN), "close", ["BTCUSDT"], "caller_not_allowed"),
    (_signed(now=NOW - 61), "close", ["BTCUSDT"], "stale"),
])
def test_a_call_that_is_not_validly_signed_is_refused(header: Any, method: str,
                                                      args: list[Any], reason: str) -> None:
    with pytest.raises(CallerRefused) as refused:
        _verifier().verify(header, method, args, {}, ALLOWED)
    assert refused.value.reason == reason


def test_a_replayed_call_is_refused_but_a_requeued_message_is_not() -> None:
    verifier, header = _verifier(), _signed()
    verifier.verify(header, "close", ["BTCUSDT"], {}, ALLOWED)
    with pytest.raises(CallerRefused, match="replayed"):
        verifier.verify(header, "close", ["BTCUSDT"], {}, ALLOWED)
    for _ in range(2):  # a retry or a dead-letter replay of a queue message
        verifier.verify(header, "close", ["BTCUSDT"], {}, ALLOWED, once=False)


def test_a_receiver_cannot_pose_as_the_caller_towards_another_service() -> None:
    """risk holds the operator's pair key *for risk* only; execute does not accept it."""
    key_risk_holds = pair_key(OPERATOR_KEY, names.RISK)
    ts, nonce = str(int(NOW * 1000)), "n1"
    mac = signing._mac(key_risk_holds, signing.VERSION, names.OPERATOR, names.EXECUTE,
                       "close_all", ts, nonce, signing.args_digest([], {}))
    forged = f"{signing.VERSION}:{names.OPERATOR}:{ts}:{nonce}:{mac}"
    with pytest.raises(CallerRefused, match="bad_signature"):
        _verifier().verify(forged, "close_all", [], {}, ALLOWED)


def test_an_unknown_caller_key_is_refused() -> None:
    verifier = Verifier(names.EXECUTE, {}, max_age_s=60, clock=lambda: NOW)
    with pytest.raises(CallerRefused, match="unknown_caller"):
        verifier.verify(_signed(), "close", ["BTCUSDT"], {}, ALLOWED)


def test_arguments_are_signed_as_they_travel() -> None:
    """A tuple becomes a list on the wire, a Decimal kombu's typed JSON: the digest is of
    what the receiver decodes."""
    from kombu.utils.json import dumps, loads

    sent = {"quantity": Decimal("0.010"), "legs": (1, 2)}
    header = sign_call(names.OPERATOR, OPERATOR_KEY, names.RISK, "check", (sent,), {},
                       now=NOW)
    received = loads(dumps({"args": [sent], "kwargs": {}}))
    verifier = _verifier(names.RISK)
    assert verifier.verify(header, "check", received["args"], received["kwargs"],
                           (names.OPERATOR,)) == names.OPERATOR


# --------------------------------------------------------------------------- approvals

RISK_KEY = "risk-own-key"


def _intent(**changes: Any) -> TradeIntent:
    fields: dict[str, Any] = dict(
        signal_id="s1", idempotency_key="k1", symbol="BTCUSDT", side="LONG",
        quantity=Decimal("0.010"), reference_price=Decimal("60000"), leverage=20,
        stop_loss=Decimal("58800"), take_profit=Decimal("61200"), margin=Decimal("30"))
    fields.update(changes)
    return TradeIntent(**fields)


def _approved(intent: TradeIntent) -> TradeIntent:
    approval = Approval.model_validate(
        sign_approval(RISK_KEY, names.EXECUTE, intent.wire(), ttl_s=120))
    # through the wire and back, as execute receives it
    return TradeIntent.model_validate(
        intent.model_copy(update={"approval": approval}).wire())


def test_an_intent_approved_by_risk_verifies() -> None:
    verify_approval(pair_key(RISK_KEY, names.EXECUTE), _approved(_intent()).wire())


@pytest.mark.parametrize("tamper", [
    {"quantity": Decimal("1.000")}, {"side": "SHORT"}, {"leverage": 125},
    {"stop_loss": None}, {"symbol": "ETHUSDT"},
])
def test_a_changed_approved_intent_is_unsigned(tamper: dict[str, Any]) -> None:
    approved = _approved(_intent())
    changed = approved.model_copy(update=tamper)
    with pytest.raises(CallerRefused, match="unsigned_intent"):
        verify_approval(pair_key(RISK_KEY, names.EXECUTE), changed.wire())


def test_an_intent_without_approval_or_signed_by_another_key_is_unsigned() -> None:
    key = pair_key(RISK_KEY, names.EXECUTE)
    with pytest.raises(CallerRefused, match="unsigned_intent"):
        verify_approval(key, _intent().wire())
    forged = sign_approval("brain-own-key", names.EXECUTE, _intent().wire(), ttl_s=120)
    with pytest.raises(CallerRefused, match="unsigned_intent"):
        verify_approval(key, _intent(approval=forged).wire())
    with pytest.raises(CallerRefused, match="unsigned_intent"):
        verify_approval(None, _approved(_intent()).wire())
