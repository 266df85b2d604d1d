"""Durable Telegram delivery: real Redis (DB 9) + the local Telegram stand-in + the worker.

The worker's PTB Application runs in-process (outbox job only), each run bounded by a
deadline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
import telegram
from prometheus_client import REGISTRY

from nameko_services.notify.outbox import AlertOutbox
from nameko_services.notify.telegram_delivery import OutboxDelivery, Sender
from nameko_services.notify.telegram_format import (
    Alert,
    format_alert,
    parse_chat_ids,
    plan_messages,
    split_text,
)
from nameko_services.notify.telegram_worker import (
    build_application,
    install,
    serve,
)
from shared import names
from shared.records import Record
from tests.support.telegram_standin import TelegramStandin

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/9"
TOKEN = "123456:TEST-TOKEN"
CHAT = "4242"
STREAM = names.ALERT_OUTBOX_STREAM
GROUP = names.TELEGRAM_GROUP
DEAD_LETTERS = names.TELEGRAM_DEAD_LETTERS_KEY


@pytest.fixture()
def rds() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis at 127.0.0.1:6379")
    # another checkout's test run may use the same DB at the same time: take turns
    lock = client.lock("phoenix95:test-lock:telegram-outbox", timeout=300,
                       blocking_timeout=300)
    assert lock.acquire(), "could not get the test lock on Redis DB 9"
    try:
        client.delete(STREAM, DEAD_LETTERS)
        yield client
        client.delete(STREAM, DEAD_LETTERS)
    finally:
        lock.release()
        client.close()


@pytest.fixture()
def outbox(rds: redis.Redis) -> AlertOutbox:
    return AlertOutbox(rds, maxlen=1000)


@pytest.fixture()
def tg() -> Iterator[TelegramStandin]:
    with TelegramStandin(token=TOKEN) as standin:
        yield standin


def pending(rds: redis.Redis) -> int:
    return int(rds.xpending(STREAM, GROUP)["pending"])


async def run_worker(
    tg: TelegramStandin,
    until: Callable[[], bool],
    timeout: float = 15.0,
    consumer: str = "test-worker",
    chats: tuple[str, ...] = (CHAT,),
    min_interval: float = 0.05,
) -> OutboxDelivery:
    """Run one worker until ``until()`` holds (or ``timeout``), then stop it cleanly."""
    client = aioredis.Redis.from_url(REDIS_URL)
    stop = asyncio.Event()
    app = build_application(TOKEN, tg.base_url, min_interval=min_interval)
    sender = Sender(app.bot, stop, backoff_initial=0.05, backoff_max=0.5)
    worker = OutboxDelivery(client, sender, list(chats), consumer=consumer)
    install(app, worker, drain_interval=0.05)
    task = asyncio.create_task(serve(app, stop, commands=False))
    try:
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.02)
    finally:
        stop.set()  # a send already accepted is still acked before the job returns
        await asyncio.wait_for(task, timeout=10)
        await client.aclose()
    return worker


def run(coro: Awaitable[OutboxDelivery]) -> OutboxDelivery:
    return asyncio.run(coro)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- delivery


def test_appended_alert_arrives_with_its_text_and_is_acked(
    rds: redis.Redis, outbox: AlertOutbox, tg: TelegramStandin
) -> None:
    entry_id = outbox.append("warning", "BTCUSDT long stopped out: -12.40 USDT")
    assert rds.xlen(STREAM) == 1

    worker = run(run_worker(tg, until=lambda: len(tg.sent) >= 1))

    (message,) = tg.sent
    assert message.chat_id == CHAT
    assert message.text == "⚠️ WARNING\nBTCUSDT long stopped out: -12.40 USDT"
    assert worker.acked == 1 and pending(rds) == 0
    assert outbox.pending_count() == 0
    assert entry_id.encode() in [e[0] for e in rds.xrange(STREAM) or []]  # kept, just acked


def test_alert_survives_two_failures_and_is_delivered_once(
    rds: redis.Redis, outbox: AlertOutbox, tg: TelegramStandin
) -> None:
    tg.fail_next(2, status=500)
    outbox.append("critical", "risk halted: daily drawdown 5.1%")

    worker = run(run_worker(tg, until=lambda: len(tg.sent) >= 1))

    assert [m.text for m in tg.sent] == ["🚨 CRITICAL\nrisk halted: daily drawdown 5.1%"]
    assert [c.status for c in tg.calls_of("sendMessage")] == [500, 500, 200]
    assert worker.sender.sent_messages == 1 and worker.acked == 1
    assert pending(rds) == 0


def test_retry_after_is_honoured(
    rds: redis.Redis, outbox: AlertOutbox, tg: TelegramStandin
) -> None:
    tg.fail_next(1, status=429, retry_after=1)
    outbox.append("info", "flood test")
    run(run_worker(tg, until=lambda: len(tg.sent) >= 1))
    calls = tg.calls_of("sendMessage")
    assert [c.status for c in calls] == [429, 200]
    assert calls[1].at - calls[0].at >= 0.95  # waited retry_after=1 s
    assert len(tg.sent) == 1 and pending(rds) == 0


def test_unacked_entry_is_reclaimed_after_restart(
    rds: redis.Redis, outbox: AlertOutbox, tg: TelegramStandin
) -> None:
    outbox.append("critical", "liquidation risk ETHUSDT")
    # a worker that read the entry and died before acking it
    rds.xreadgroup(GROUP, "dead-host-1", {STREAM: ">"}, count=10)
    assert pending(rds) == 1

    worker = run(run_worker(tg, until=lambda: len(tg.sent) >= 1, consumer="new-host-2"))

    assert [m.text for m in tg.sent] == ["🚨 CRITICAL\nliquidation risk ETHUSDT"]
    assert worker.acked == 1 and pending(rds) == 0


def test_worker_stopped_mid_retry_leaves_entry_pending_for_the_next_one(
    rds: redis.Redis, outbox: AlertOutbox, tg: TelegramStandin
) -> None:
    tg.fail_next(1000, status=500)
    outbox.append("info", "position opened BNBUSDT")
    first = run(run_worker(tg, until=lambda: len(tg.calls_of("sendMessage")) >= 3,
                           consumer="worker-a"))
    assert first.acked == 0 and tg.sent == []
    assert pending(rds) == 1  # not dropped, not acked

    tg.reset()  # Telegram is back
    second = run(run_worker(tg, until=lambda: len(tg.sent) >= 1, consumer="worker-b"))
    assert [m.text for m in tg.sent] == ["ℹ️ INFO\nposition opened BNBUSDT"]
    assert second.acked == 1 and pending(rds) == 0


def test_backlog_merges_non_critical_but_sends_each_critical_alone(
    rds: redis.Redis, outbox: AlertOutbox, tg: TelegramStandin
) -> None:
    outbox.append("info", "one")
    outbox.append("critical", "CRIT-A")
    outbox.append("warning", "two")
    outbox.append("critical", "CRIT-B")
    outbox.append("info", "three")

    worker = run(run_worker(tg, until=lambda: len(tg.sent) >= 3, min_interval=0.3))

    texts = [m.text for m in tg.sent]
    assert texts[0] == "🚨 CRITICAL\nCRIT-A"
    assert texts[1] == "🚨 CRITICAL\nCRIT-B"
    assert texts[2].startswith("📬 3 alerts")
    assert texts[2].index("one") < texts[2].index("two") < texts[2].index("three")
    assert len(texts) == 3
    assert worker.acked == 5 and pending(rds) == 0
    gaps = [b.at - a.at for a, b in zip(tg.sent, tg.sent[1:], strict=False)]
    assert all(gap >= 0.25 for gap in gaps), gaps  # per-chat rate limit


def test_every_chat_gets_it_before_the_ack(
    rds: redis.Redis, outbox: AlertOutbox, tg: TelegramStandin
) -> None:
    tg.fail_next(1, status=500)  # the first chat's first attempt fails
    outbox.append("info", "multi-chat")
    worker = run(run_worker(tg, until=lambda: len(tg.sent) >= 2, chats=("111", "-100222")))
    assert sorted(str(m.chat_id) for m in tg.sent) == ["-100222", "111"]
    assert worker.acked == 1 and pending(rds) == 0


def test_a_deleted_outbox_stream_is_recreated_and_delivery_goes_on(
    rds: redis.Redis, outbox: AlertOutbox, tg: TelegramStandin
) -> None:
    outbox.append("info", "before")

    def deleted_then_refilled() -> bool:
        if len(tg.sent) == 1 and rds.exists(STREAM) and not rds.get("t:refilled"):
            rds.delete(STREAM)  # a Redis that lost its data, or an operator's DEL
            rds.set("t:refilled", 1, ex=60)
            rds.xadd(STREAM, Record("alert", {"level": "info", "text": "after"})
                     .stream_fields())  # type: ignore[arg-type]
        return len(tg.sent) >= 2

    worker = run(run_worker(tg, until=deleted_then_refilled))
    rds.delete("t:refilled")

    assert [m.text for m in tg.sent] == ["ℹ️ INFO\nbefore", "ℹ️ INFO\nafter"]
    assert worker.acked == 2 and pending(rds) == 0


def test_outbox_validates_and_trims(rds: redis.Redis) -> None:
    box = AlertOutbox(rds, maxlen=100)
    with pytest.raises(ValueError):
        box.append("debug", "x")
    with pytest.raises(ValueError):
        box.append("info", "   ")
    for i in range(400):
        box.append("info", f"n{i}")
    assert rds.xlen(STREAM) < 400  # MAXLEN ~ applied
    groups = rds.xinfo_groups(STREAM)
    assert [g["name"] for g in groups] == [GROUP.encode()]
    assert box.backlog() == rds.xlen(STREAM)


# --------------------------------------------------------------------------- permanent errors


def test_a_blocked_chat_is_dead_lettered_and_never_holds_up_later_alerts(
    rds: redis.Redis, outbox: AlertOutbox, tg: TelegramStandin
) -> None:
    tg.block_chat("111")  # 403 Forbidden: bot was blocked by the user
    outbox.append("warning", "first")
    outbox.append("critical", "second")

    worker = run(run_worker(tg, until=lambda: len(tg.sent) >= 2, chats=("111", "222")))

    assert sorted(m.text for m in tg.sent) == ["⚠️ WARNING\nfirst", "🚨 CRITICAL\nsecond"]
    assert {str(m.chat_id) for m in tg.sent} == {"222"}
    refused = [c for c in tg.calls_of("sendMessage") if str(c.params["chat_id"]) == "111"]
    assert [c.status for c in refused] == [403, 403]  # once each, never retried
    assert worker.acked == 2 and pending(rds) == 0
    letters = outbox.dead_letters()
    assert [(d["chat"], d["level"]) for d in letters] == [("111", "info"), ("111", "critical")]
    assert all("Forbidden" in d["error"] for d in letters)
    assert "first" in letters[0]["text"]
    assert outbox.dead_letter_count() == 2
    assert REGISTRY.get_sample_value("phoenix95_telegram_dead_letters") == 2


def test_chat_not_found_is_dead_lettered_with_an_error_in_the_log(
    rds: redis.Redis, outbox: AlertOutbox, tg: TelegramStandin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tg.block_chat(CHAT, status=400, description="Bad Request: chat not found")
    outbox.append("critical", "liquidation risk SOLUSDT")

    with caplog.at_level(logging.ERROR, logger="phoenix95.telegram_worker"):
        worker = run(run_worker(tg, until=lambda: rds.llen(DEAD_LETTERS) >= 1))

    assert len(tg.calls_of("sendMessage")) == 1
    assert worker.acked == 1 and worker.dead_lettered == 1 and pending(rds) == 0
    [letter] = outbox.dead_letters()
    assert letter["chat"] == CHAT and "chat not found" in letter["error"].lower()
    assert any("dead-lettered" in r.getMessage() for r in caplog.records)


def test_a_full_outbox_never_trims_an_undelivered_critical_alert(rds: redis.Redis) -> None:
    box = AlertOutbox(rds, maxlen=100)
    box.ensure_group()
    dropped_before = REGISTRY.get_sample_value("phoenix95_alert_outbox_dropped_total",
                                               {"level": "info"}) or 0.0
    for i in range(30):
        box.append("critical", f"CRIT-{i}")
    for i in range(370):
        box.append("info", f"n{i}")

    texts = [Record.from_stream_fields(f).data["text"] for _, f in rds.xrange(STREAM)]
    assert [t for t in texts if t.startswith("CRIT-")] == [f"CRIT-{i}" for i in range(30)]
    assert rds.xlen(STREAM) <= 100
    assert texts[-1] == "n369"  # the newest stay
    dropped = REGISTRY.get_sample_value("phoenix95_alert_outbox_dropped_total",
                                        {"level": "info"}) or 0.0
    assert dropped - dropped_before == 400 - rds.xlen(STREAM)


def test_trimming_takes_delivered_alerts_before_undelivered_ones(rds: redis.Redis) -> None:
    box = AlertOutbox(rds, maxlen=100)
    for i in range(60):
        box.append("info", f"old{i}")
    delivered = rds.xreadgroup(GROUP, "w1", {STREAM: ">"}, count=100)
    rds.xack(STREAM, GROUP, *[eid for eid, _ in delivered[0][1]])

    for i in range(60):
        box.append("info", f"new{i}")

    texts = [Record.from_stream_fields(f).data["text"] for _, f in rds.xrange(STREAM)]
    assert [t for t in texts if t.startswith("new")] == [f"new{i}" for i in range(60)]
    assert len(texts) <= 100


# --------------------------------------------------------------------------- pure logic


def test_plan_messages_and_splitting() -> None:
    alerts = [Alert(f"{i}-0", "info", f"a{i}") for i in range(3)]
    single = plan_messages(alerts[:1])
    assert [m.parts for m in single] == [["ℹ️ INFO\na0"]]
    merged = plan_messages(alerts)
    assert len(merged) == 1 and merged[0].entry_ids == ("0-0", "1-0", "2-0")
    huge = Alert("9-0", "critical", "x" * 9000)
    (msg,) = plan_messages([huge])
    assert len(msg.parts) == 3 and all(len(p) <= 4096 for p in msg.parts)
    assert "".join(msg.parts).count("x") == 9000
    big_infos = [Alert(f"{i}-1", "info", "y" * 1500) for i in range(6)]
    digests = plan_messages(big_infos)
    assert all(len(p) <= 4096 for m in digests for p in m.parts)
    assert sum(len(m.entry_ids) for m in digests) == 6
    assert split_text("a\nb", limit=2) == ["a", "b"]
    assert parse_chat_ids(" 1, -100 2,,@chan ") == ["1", "-100 2", "@chan"]
    assert format_alert(Alert("1-0", "custom", "t")) == "🔔 CUSTOM\nt"


# --------------------------------------------------------------------------- stand-in


def test_standin_speaks_bot_api_for_python_telegram_bot(tg: TelegramStandin) -> None:
    async def scenario() -> None:
        async with telegram.Bot(TOKEN, base_url=tg.base_url) as bot:
            me = await bot.get_me()
            assert me.is_bot and me.username == tg.username
            tg.queue_message("/status")
            tg.queue_callback_query("close:BTCUSDT")
            updates = await bot.get_updates(timeout=1)
            assert updates[0].message is not None
            assert updates[0].message.text == "/status"
            query = updates[1].callback_query
            assert query is not None and query.data == "close:BTCUSDT"
            assert await bot.answer_callback_query(query.id, text="ok") is True
            assert await bot.get_updates(offset=updates[-1].update_id + 1, timeout=0) == ()
            sent = await bot.send_message(chat_id=-100123, text="hello")
            assert sent.text == "hello" and sent.chat.id == -100123
        bad = telegram.Bot("999:WRONG", base_url=tg.base_url)
        with pytest.raises(telegram.error.InvalidToken):
            await bad.get_me()

    asyncio.run(scenario())
    assert [c.method for c in tg.calls][:1] == ["getMe"]
    assert tg.calls_of("answerCallbackQuery")[0].params["text"] == "ok"


def test_worker_exits_with_one_line_when_telegram_is_not_configured(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOENIX")}
    env.update({
        "PHOENIX_DOTENV": str(tmp_path / "none.env"),
        "PHOENIX__SECURITY__WEBHOOK_SECRET": "s",
        "PHOENIX__SECURITY__API_KEYS": '["k"]',
        "PHOENIX__MESSAGE_QUEUE__PASSWORD": "p",
        "PHOENIX__EXCHANGE__API_KEY": "k",
        "PHOENIX__EXCHANGE__API_SECRET": "s",
        "PHOENIX__TELEGRAM__TOKEN": "",
        "PHOENIX__TELEGRAM__CHAT_ID": "",
    })
    proc = subprocess.run(
        [sys.executable, "-m", "nameko_services.notify.telegram_worker"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "arn" not in ln]
    assert lines[-1].startswith("telegram worker: telegram.token and telegram.chat_id")
