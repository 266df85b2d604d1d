"""Telegram command engine: chat allow-list, confirmations, RPC calls (fake services)."""

from __future__ import annotations

import asyncio
import datetime as dtm
from decimal import Decimal
from typing import Any

import pytest
import telegram
from hypothesis import given
from hypothesis import strategies as st

from nameko_services.notify.commands import (
    AnswerCallback,
    CommandEngine,
    Incoming,
    Reply,
    format_positions,
    liquidation_distance,
    parse_command,
    pnl_summary,
)

ALLOWED = "4242"
NOW = dtm.datetime(2026, 11, 23, 12, 0, tzinfo=dtm.UTC)


class FakeControl:
    """The services, as the commands see them; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.state = "ACTIVE"
        self.open = [{"symbol": "BTCUSDT", "side": "LONG", "quantity": "0.010",
                      "entry_price": "60000", "mark_price": "60600",
                      "unrealized_pnl": "6.00", "leverage": 20, "margin": "30",
                      "liquidation_price": "57228.9", "stop_loss": "58800",
                      "take_profit": "61200", "signal_id": "s1"}]

    def risk_status(self) -> dict[str, Any]:
        self.calls.append(("status",))
        return {"state": self.state, "reason": "", "equity": "10006.5", "available": "9970",
                "daily_pnl": "7.40",
                "margin_used": "30", "margin_usage": "0.0030", "exposure": "606",
                "open_positions": [{"symbol": "BTCUSDT"}]}

    def set_state(self, state: str, reason: str) -> dict[str, Any]:
        self.calls.append(("set_state", state, reason))
        previous, self.state = self.state, state
        return {"state": state, "previous": previous, "reason": reason}

    def positions(self) -> list[dict[str, Any]]:
        self.calls.append(("positions",))
        return list(self.open)

    def close(self, symbol: str) -> dict[str, Any]:
        self.calls.append(("close", symbol))
        return {"status": "closed", "symbol": symbol, "exit_price": "60500",
                "realized_pnl": "5.0"}

    def close_all(self) -> list[dict[str, Any]]:
        self.calls.append(("close_all",))
        return [self.close(p["symbol"]) for p in self.open]

    def trades(self, limit: int) -> list[dict[str, Any]]:
        self.calls.append(("trades", limit))
        return [
            {"realized_pnl": "12.5", "closed_at": "2026-11-23T09:00:00+00:00"},
            {"realized_pnl": "-4.5", "closed_at": "2026-11-23T10:00:00+00:00"},
            {"realized_pnl": "100", "closed_at": "2026-11-22T10:00:00+00:00"},
            {"realized_pnl": None, "closed_at": None},
        ]


class MemoryConfirmStore:
    """In-memory stand-in for the Redis confirmation store (same take-once semantics)."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, str]] = {}

    async def put(self, token: str, payload: dict[str, str], ttl_s: int) -> None:
        self.items[token] = dict(payload)

    async def take(self, token: str) -> dict[str, str] | None:
        return self.items.pop(token, None)


async def _direct(fn: Any, *args: Any) -> Any:
    return fn(*args)


@pytest.fixture()
def control() -> FakeControl:
    return FakeControl()


@pytest.fixture()
def engine(control: FakeControl) -> CommandEngine:
    return CommandEngine(control, [ALLOWED, "-100777"], MemoryConfirmStore(),
                         run_blocking=_direct, now=lambda: NOW)


def handle(engine: CommandEngine, text: str = "", chat: str = ALLOWED,
           user_id: str = ALLOWED, **kw: Any) -> list[Any]:
    """A message; by default from the private chat's own user (chat id == user id)."""
    return asyncio.run(engine.handle(Incoming(chat, text=text, user="trader", user_id=user_id,
                                              **kw)))


def press(engine: CommandEngine, data: str, chat: str = ALLOWED,
          user_id: str = ALLOWED) -> list[Any]:
    return asyncio.run(engine.handle(Incoming(chat, callback_id="cb1", callback_data=data,
                                              user="trader", user_id=user_id)))


def test_status_from_allowed_chat_answers_with_state_and_equity(
        engine: CommandEngine, control: FakeControl) -> None:
    (reply,) = handle(engine, "/status")
    assert isinstance(reply, Reply) and reply.chat_id == ALLOWED
    assert "State: ACTIVE" in reply.text and "10,006.50" in reply.text
    assert "0.3% of equity" in reply.text and "Open positions: 1" in reply.text
    assert control.calls == [("status",)]


def test_other_chat_gets_nothing_and_no_service_is_called(
        engine: CommandEngine, control: FakeControl) -> None:
    assert handle(engine, "/status", chat="999") == []
    assert handle(engine, "/halt", chat="999") == []
    assert press(engine, "ok:whatever", chat="999") == []
    assert control.calls == []


def test_halt_asks_for_confirmation_and_acts_only_after_the_button(
        engine: CommandEngine, control: FakeControl) -> None:
    (question,) = handle(engine, "/halt")
    assert "HALT" in question.text and control.calls == []
    (ok_label, ok_data), (_, no_data) = question.buttons
    assert ok_data.startswith("ok:") and no_data.startswith("no:")

    answer, result = press(engine, ok_data)

    assert isinstance(answer, AnswerCallback) and answer.callback_id == "cb1"
    assert result.text == "Trading state ACTIVE -> HALTED"
    assert control.calls == [("set_state", "HALTED", "telegram /halt by trader")]


def test_a_confirmation_cannot_be_used_twice(engine: CommandEngine,
                                             control: FakeControl) -> None:
    (question,) = handle(engine, "/closeall")
    ok = question.buttons[0][1]
    press(engine, ok)
    answer, reply = press(engine, ok)
    assert answer.text == "Expired or already used" and "expired" in reply.text
    assert control.calls.count(("close_all",)) == 1


def test_cancel_does_nothing(engine: CommandEngine, control: FakeControl) -> None:
    (question,) = handle(engine, "/pause")
    answer, reply = press(engine, question.buttons[1][1])
    assert answer.text == "Cancelled" and reply.text == "/pause cancelled."
    assert control.calls == []


def test_confirmation_from_another_allowed_chat_is_refused(
        engine: CommandEngine, control: FakeControl) -> None:
    (question,) = handle(engine, "/resume")
    _, reply = press(engine, question.buttons[0][1], chat="-100777")
    assert "expired" in reply.text and control.calls == []


def test_close_validates_the_symbol_then_closes_it(engine: CommandEngine,
                                                   control: FakeControl) -> None:
    (usage,) = handle(engine, "/close")
    assert usage.text.startswith("Usage: /close SYMBOL") and not usage.buttons
    (question,) = handle(engine, "/close@phoenix95_bot btcusdt")
    assert "BTCUSDT" in question.text
    _, result = press(engine, question.buttons[0][1])
    assert result.text == "Close BTCUSDT: closed (exit_price 60500, realized_pnl 5.0)"
    assert ("close", "BTCUSDT") in control.calls


def test_positions_show_upnl_and_liquidation_distance(engine: CommandEngine) -> None:
    (reply,) = handle(engine, "/positions")
    assert "BTCUSDT LONG 0.010 @ 60000 x20" in reply.text
    assert "uPnL 6.00" in reply.text and "liq 57228.9 (5.56% away)" in reply.text


def test_pnl_shows_risks_daily_pnl_and_counts_todays_trades(engine: CommandEngine) -> None:
    (reply,) = handle(engine, "/pnl")
    # risk's figure (net of fees), not the sum of today's closed trades (8.00 gross)
    assert "Daily PnL (realised, net of fees, since 00:00 UTC): 7.40 USDT" in reply.text
    assert "Closed today: 2 (1 won, 1 lost)" in reply.text
    assert "Unrealised now: 6.00" in reply.text
    assert "overall: 108.00" in reply.text


def test_failing_service_is_reported_not_raised(engine: CommandEngine,
                                                control: FakeControl) -> None:
    def broken() -> dict[str, Any]:
        raise TimeoutError("risk did not answer")

    control.risk_status = broken  # type: ignore[method-assign]
    (reply,) = handle(engine, "/status")
    assert reply.text == "/status failed: TimeoutError: risk did not answer"


def test_old_commands_are_not_executed(engine: CommandEngine, control: FakeControl) -> None:
    (reply,) = handle(engine, "/status", date=NOW - dtm.timedelta(hours=1))
    assert reply.text.startswith("Ignored /status") and control.calls == []


def test_help_unknown_and_plain_text(engine: CommandEngine) -> None:
    (help_reply,) = handle(engine, "/help")
    for command in ("/status", "/positions", "/pnl", "/close SYMBOL", "/closeall", "/pause",
                    "/halt", "/resume"):
        assert command in help_reply.text
    (unknown,) = handle(engine, "/moon")
    assert unknown.text.startswith("Unknown command /moon")
    assert handle(engine, "hello bot") == []


def test_incoming_from_real_telegram_updates() -> None:
    bot = telegram.Bot("1:x")
    message = telegram.Update.de_json({"update_id": 5, "message": {
        "message_id": 1, "date": int(NOW.timestamp()), "text": "/status",
        "chat": {"id": 4242, "type": "private"},
        "from": {"id": 4242, "is_bot": False, "first_name": "T", "username": "tr"}}}, bot)
    callback = telegram.Update.de_json({"update_id": 6, "callback_query": {
        "id": "q1", "data": "ok:abc", "chat_instance": "1",
        "from": {"id": 4242, "is_bot": False, "first_name": "T"},
        "message": {"message_id": 2, "date": 0, "chat": {"id": -100777, "type": "supergroup"},
                    "text": "?"}}}, bot)
    assert Incoming.from_update(message) == Incoming("4242", text="/status", user="tr",
                                                     date=NOW, user_id="4242")
    assert Incoming.from_update(callback) == Incoming("-100777", callback_id="q1",
                                                      callback_data="ok:abc", user="T",
                                                      user_id="4242")


def test_pure_helpers() -> None:
    assert parse_command("/close@bot btcusdt now") == ("close", ["btcusdt", "now"])
    assert parse_command("close") is None and parse_command("/") is None
    assert liquidation_distance({"liquidation_price": "0", "entry_price": "1"}) is None
    assert format_positions([]) == "No open positions."
    summary = pnl_summary([], [{"unrealized_pnl": "-1.5"}], NOW.date())
    assert summary["unrealized"] == Decimal("-1.5") and summary["closed_today"] == 0


@given(entry=st.decimals(min_value="0.0001", max_value="1000000", places=4),
       liq=st.decimals(min_value="0.0001", max_value="1000000", places=4))
def test_liquidation_distance_is_relative_to_the_price(entry: Decimal, liq: Decimal) -> None:
    dist = liquidation_distance({"entry_price": str(entry), "liquidation_price": str(liq)})
    assert dist is not None and dist >= 0
    assert dist == abs(entry - liq) / entry
