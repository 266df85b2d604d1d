"""Telegram commands: who may command (allowed_user_ids) and the sealed, user-bound confirmation."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from nameko_services.notify.commands import CommandEngine, Incoming, Reply, confirm_key
from tests.unit.notify.test_commands import NOW, FakeControl, MemoryConfirmStore, _direct

GROUP = "-100777"
TRADER, MEMBER = "1001", "2002"


def make(control: FakeControl, store: MemoryConfirmStore, users: tuple[str, ...] = (TRADER,),
         key: bytes = b"k" * 32) -> CommandEngine:
    return CommandEngine(control, [GROUP, TRADER, MEMBER], store, run_blocking=_direct,
                         now=lambda: NOW, allowed_users=users, confirm_key=key)


def say(engine: CommandEngine, text: str, user_id: str, chat: str = GROUP) -> list[Any]:
    return asyncio.run(engine.handle(Incoming(chat, text=text, user="u", user_id=user_id)))


def press(engine: CommandEngine, data: str, user_id: str, chat: str = GROUP) -> list[Any]:
    return asyncio.run(engine.handle(Incoming(chat, callback_id="cb", callback_data=data,
                                              user="u", user_id=user_id)))


@pytest.fixture()
def control() -> FakeControl:
    return FakeControl()


@pytest.fixture()
def store() -> MemoryConfirmStore:
    return MemoryConfirmStore()


def test_group_member_not_in_the_list_cannot_closeall(control, store) -> None:
    engine = make(control, store)
    (reply,) = say(engine, "/closeall", MEMBER)
    assert isinstance(reply, Reply) and "2002 is not in telegram.allowed_user_ids" in reply.text
    assert not reply.buttons and store.items == {} and control.calls == []


def test_listed_user_gets_the_confirmation_and_it_works(control, store) -> None:
    engine = make(control, store)
    (question,) = say(engine, "/closeall", TRADER)
    _, result = press(engine, question.buttons[0][1], TRADER)
    assert control.calls.count(("close_all",)) == 1 and "Close BTCUSDT" in result.text


def test_only_the_asker_can_press_confirm_and_the_asker_still_can(control, store) -> None:
    engine = make(control, store, users=(TRADER, MEMBER))
    (question,) = say(engine, "/halt", TRADER)
    ok = question.buttons[0][1]
    (refused,) = press(engine, ok, MEMBER)
    assert refused.text == "Only the user who asked can confirm" and control.calls == []
    press(engine, ok, TRADER)
    assert [c[:2] for c in control.calls] == [("set_state", "HALTED")]


def test_cancel_by_another_user_is_refused_too(control, store) -> None:
    engine = make(control, store, users=(TRADER, MEMBER))
    (question,) = say(engine, "/pause", TRADER)
    (refused,) = press(engine, question.buttons[1][1], MEMBER)
    assert refused.text == "Only the user who asked can confirm" and len(store.items) == 1


def test_redis_write_changing_the_command_is_refused(control, store) -> None:
    engine = make(control, store)
    (question,) = say(engine, "/close BTCUSDT", TRADER)
    token = question.buttons[0][1].split(":", 1)[1]
    store.items[token]["command"] = "closeall"  # an attacker with Redis write access
    answer, reply = press(engine, question.buttons[0][1], TRADER)
    assert answer.text == "Expired or already used" and control.calls == []


def test_a_forged_confirmation_without_the_key_is_refused(control, store) -> None:
    engine = make(control, store)
    store.items["forged"] = {"command": "closeall", "arg": "", "chat": GROUP, "user": "u",
                             "user_id": TRADER, "expires": NOW.isoformat(), "mac": "0" * 64}
    answer, _ = press(engine, "ok:forged", TRADER)
    assert answer.text == "Expired or already used" and control.calls == []


def test_a_confirmation_survives_a_restart_with_the_same_key(control, store) -> None:
    (question,) = say(make(control, store), "/resume", TRADER)
    press(make(control, store), question.buttons[0][1], TRADER)  # a new engine, same key
    assert [c[:2] for c in control.calls] == [("set_state", "ACTIVE")]


def test_without_a_list_group_members_read_but_do_not_trade(control, store) -> None:
    engine = make(control, store, users=())
    (status,) = say(engine, "/status", MEMBER)
    (refused,) = say(engine, "/closeall", MEMBER)
    assert "State: ACTIVE" in status.text and "refused" in refused.text
    (question,) = say(engine, "/closeall", TRADER, chat=TRADER)  # private chat: its owner
    assert question.buttons


def test_listed_users_only_even_for_reading(control, store) -> None:
    (reply,) = say(make(control, store), "/positions", MEMBER)
    assert "refused" in reply.text and control.calls == []


def test_confirm_key_is_its_own_secret_or_derived_from_the_webhook_secret() -> None:
    assert confirm_key("own", "wh") == b"own"
    derived = confirm_key("", "wh")
    assert len(derived) == 32 and derived != confirm_key("", "other") and b"wh" not in derived


def test_sealed_payload_is_json_safe(control, store) -> None:
    say(make(control, store), "/close ETHUSDT", TRADER)
    (payload,) = store.items.values()
    assert json.loads(json.dumps(payload))["mac"] == payload["mac"]
