"""Telegram commands end to end inside the worker: python-telegram-bot long-polls the local
stand-in, offsets and confirmations live in real Redis (DB 13); the services behind the
commands are a fake :class:`Control` (the e2e tests use the real ones over RPC)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from nameko_services.notify.commands import CommandEngine, RedisConfirmStore
from nameko_services.notify.telegram_delivery import OutboxDelivery, Sender
from nameko_services.notify.telegram_worker import (
    Commands,
    build_application,
    install,
    serve,
)
from tests.support.telegram_standin import TelegramStandin

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/13"
TOKEN = "123456:TEST-TOKEN"
ALLOWED = 4242
STRANGER = 999


class FakeControl:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.state = "ACTIVE"

    def risk_status(self) -> dict[str, Any]:
        self.calls.append(("status",))
        return {"state": self.state, "equity": "10000", "available": "10000",
                "margin_used": "0", "margin_usage": "0", "exposure": "0", "open_positions": []}

    def set_state(self, state: str, reason: str) -> dict[str, Any]:
        self.calls.append(("set_state", state, reason))
        previous, self.state = self.state, state
        return {"state": state, "previous": previous}

    def positions(self) -> list[dict[str, Any]]:
        return []

    def close(self, symbol: str) -> dict[str, Any]:
        return {"status": "no_position", "symbol": symbol}

    def close_all(self) -> list[dict[str, Any]]:
        return []

    def trades(self, limit: int) -> list[dict[str, Any]]:
        return []


@pytest.fixture()
def keys() -> Iterator[dict[str, str]]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis at 127.0.0.1:6379")
    suffix = uuid.uuid4().hex
    names = {"offset": f"test:tg-offset:{suffix}", "confirm": f"test:tg-confirm:{suffix}:",
             "stream": f"test:tg-outbox:{suffix}"}
    yield names
    client.delete(names["offset"], names["stream"])
    for key in client.scan_iter(names["confirm"] + "*"):
        client.delete(key)
    client.close()


@pytest.fixture()
def tg() -> Iterator[TelegramStandin]:
    with TelegramStandin(token=TOKEN) as standin:
        yield standin


def run_commands(tg: TelegramStandin, keys: dict[str, str], control: FakeControl,
                 until: Callable[[], bool], timeout: float = 20.0) -> Commands:
    """The worker's Application, commands polling on, until ``until()`` (or ``timeout``)."""
    async def scenario() -> Commands:
        client = aioredis.Redis.from_url(REDIS_URL)
        stop = asyncio.Event()
        app = build_application(TOKEN, tg.base_url, min_interval=0.01)
        sender = Sender(app.bot, stop, backoff_initial=0.05, backoff_max=0.2)
        delivery = OutboxDelivery(client, sender, [str(ALLOWED)], stream=keys["stream"],
                                  consumer="cmd-test")
        engine = CommandEngine(control, [str(ALLOWED)],
                               RedisConfirmStore(client, prefix=keys["confirm"]),
                               confirm_key=b"integration-test-confirm-key")  # as settings give
        commands = Commands(engine, sender, client, offset_key=keys["offset"])
        install(app, delivery, commands)
        task = asyncio.create_task(serve(app, stop, poll_timeout=1))
        try:
            deadline = time.monotonic() + timeout
            while not until() and time.monotonic() < deadline and not task.done():
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=10)
            await client.aclose()
        return commands

    return asyncio.run(scenario())


def sent_to(tg: TelegramStandin, chat: int) -> list[str]:
    return [m.text for m in tg.sent if str(m.chat_id) == str(chat)]


def test_status_is_answered_in_the_allowed_chat_and_ignored_elsewhere(
        tg: TelegramStandin, keys: dict[str, str]) -> None:
    control = FakeControl()
    tg.queue_message("/status", chat_id=STRANGER, user_id=STRANGER)
    last = tg.queue_message("/status", chat_id=ALLOWED, user_id=ALLOWED)

    commands = run_commands(tg, keys, control, until=lambda: bool(sent_to(tg, ALLOWED)))

    (answer,) = sent_to(tg, ALLOWED)
    assert answer.startswith("State: ACTIVE")
    assert sent_to(tg, STRANGER) == []
    assert control.calls == [("status",)]  # the stranger's /status called nothing
    assert commands.handled == 2
    assert int(redis.Redis.from_url(REDIS_URL).get(keys["offset"]) or 0) == \
        last["update_id"] + 1


def test_halt_needs_the_inline_button_and_answers_the_callback(
        tg: TelegramStandin, keys: dict[str, str]) -> None:
    control = FakeControl()
    tg.queue_message("/halt", chat_id=ALLOWED, user_id=ALLOWED)
    run_commands(tg, keys, control, until=lambda: bool(sent_to(tg, ALLOWED)))
    (question,) = [m for m in tg.sent if str(m.chat_id) == str(ALLOWED)]
    keyboard = question.params["reply_markup"]["inline_keyboard"][0]
    assert [b["text"] for b in keyboard] == ["✅ Confirm", "✖ Cancel"]
    assert control.calls == []

    # a restarted worker (same Redis) still knows the pending confirmation
    tg.queue_callback_query(keyboard[0]["callback_data"], chat_id=ALLOWED, user_id=ALLOWED)
    run_commands(tg, keys, control, until=lambda: len(sent_to(tg, ALLOWED)) >= 2)

    assert control.calls == [("set_state", "HALTED", "telegram /halt by Trader")]
    assert sent_to(tg, ALLOWED)[-1] == "Trading state ACTIVE -> HALTED"
    (answer,) = tg.calls_of("answerCallbackQuery")
    assert answer.params["text"] == "/halt: working…"


def test_a_restarted_worker_does_not_repeat_handled_commands(
        tg: TelegramStandin, keys: dict[str, str]) -> None:
    control = FakeControl()
    tg.queue_message("/status", chat_id=ALLOWED, user_id=ALLOWED)
    run_commands(tg, keys, control, until=lambda: bool(sent_to(tg, ALLOWED)))
    tg.queue_message("/help", chat_id=ALLOWED, user_id=ALLOWED)

    run_commands(tg, keys, control, until=lambda: len(sent_to(tg, ALLOWED)) >= 2)

    texts = sent_to(tg, ALLOWED)
    assert len(texts) == 2 and texts[1].startswith("Phoenix 95 commands")
    assert control.calls == [("status",)]


def test_an_update_telegram_serves_again_after_a_crash_is_not_handled_twice(
        tg: TelegramStandin, keys: dict[str, str]) -> None:
    # a worker handled /status (offset saved) and died before Telegram heard of it
    control = FakeControl()
    handled = tg.queue_message("/status", chat_id=ALLOWED, user_id=ALLOWED)
    redis.Redis.from_url(REDIS_URL).set(keys["offset"], handled["update_id"] + 1)
    tg.queue_message("/help", chat_id=ALLOWED, user_id=ALLOWED)

    commands = run_commands(tg, keys, control, until=lambda: bool(sent_to(tg, ALLOWED)))

    (answer,) = sent_to(tg, ALLOWED)
    assert answer.startswith("Phoenix 95 commands")
    assert control.calls == [] and commands.handled == 1
