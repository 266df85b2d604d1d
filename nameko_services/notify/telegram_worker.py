"""Telegram delivery worker: drains the durable alert outbox into Telegram.

    python -m nameko_services.notify.telegram_worker

A plain asyncio process (no eventlet). It reads ``names.ALERT_OUTBOX_STREAM`` through the
consumer group ``names.TELEGRAM_GROUP`` (consumer ``<host>-<pid>``), first reclaiming
entries another (dead) worker left pending (XAUTOCLAIM), and sends each alert to every
chat in ``telegram.chat_id`` (comma-separated). An entry is XACKed only after Telegram
accepted it in every chat; transient failures are retried forever with exponential
back-off (``RetryAfter`` honoured), so nothing is dropped. A permanent refusal (bot blocked
or kicked: 403; chat not found, bad request: 400) is not retried: that chat's copy goes
to the dead-letter list ``names.TELEGRAM_DEAD_LETTERS_KEY`` with an error in the log, and
the later alerts (critical ones first) keep flowing. At most one message per second goes to
each chat; when a backlog builds, non-critical alerts are merged into digest messages,
while every critical alert is sent first and on its own.

The same process answers the trader's commands (``/status``, ``/halt``, ...; see
:mod:`nameko_services.notify.commands`): a second task long-polls ``getUpdates`` (its own
HTTP connection pool, so polling never delays an alert), keeps the last handled update id
in Redis (``names.TELEGRAM_OFFSET_KEY``) so a restart neither loses nor repeats commands,
and calls the services over Nameko RPC in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import json
import logging
import os
import signal
import socket
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import redis.asyncio as aioredis
import telegram
from redis.exceptions import RedisError, ResponseError
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    RetryAfter,
    TelegramError,
)

from nameko_services.notify.commands import (
    Action,
    AnswerCallback,
    CommandEngine,
    RedisConfirmStore,
    RpcControl,
    confirm_key,
)
from nameko_services.notify.outbox import DEAD_LETTERS_KEPT
from shared import names
from shared.leader import LeaderLease, run_while_leading
from shared.records import Record
from shared.redis_conn import async_redis_client, redis_client
from shared.settings import Settings, settings_or_exit

log = logging.getLogger("phoenix95.telegram_worker")

MAX_MESSAGE: Final = 4000  # Telegram allows 4096 (UTF-16 units); keep a margin for emoji
LEVEL_PREFIX: Final = {
    "info": "ℹ️ INFO",
    "warning": "⚠️ WARNING",
    "critical": "🚨 CRITICAL",
}


# --------------------------------------------------------------------------- alerts


@dataclass(frozen=True)
class Alert:
    """One outbox entry."""

    entry_id: str
    level: str
    text: str
    ts: int = 0

    @property
    def critical(self) -> bool:
        return self.level == "critical"


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def parse_entry(entry_id: Any, fields: dict[Any, Any]) -> Alert:
    """Decode an outbox entry; a malformed one becomes a warning carrying its raw fields."""
    eid = _text(entry_id)
    try:
        record = Record.from_stream_fields(fields)
        level = str(record.data.get("level", "info")).lower()
        text = str(record.data.get("text", "")).strip()
        if not text:
            text = f"(empty alert {eid})"
        return Alert(eid, level, text, record.ts)
    except (ValueError, TypeError, AttributeError):
        raw = {_text(k): _text(v) for k, v in fields.items()}
        return Alert(eid, "warning", f"(malformed outbox entry {eid}) {raw}")


def format_alert(alert: Alert) -> str:
    prefix = LEVEL_PREFIX.get(alert.level, f"🔔 {alert.level.upper()}")
    return f"{prefix}\n{alert.text}"


def split_text(text: str, limit: int = MAX_MESSAGE) -> list[str]:
    """Split ``text`` into Telegram-sized parts, preferring line breaks."""
    parts: list[str] = []
    while len(text) > limit:
        cut = text.rfind("\n", 0, limit)
        if cut < limit // 2:  # no line break in the second half: hard cut
            cut = limit
        parts.append(text[:cut])
        text = text[cut:].lstrip("\n")
    if text or not parts:
        parts.append(text)
    return parts


@dataclass
class Outgoing:
    """One Telegram message (maybe in several parts) covering one or more outbox entries."""

    parts: list[str]
    entry_ids: tuple[str, ...]
    critical: bool
    done: set[tuple[str, int]] = field(default_factory=set)  # (chat, part index) accepted


def plan_messages(alerts: Sequence[Alert], merge_from: int = 2,
                  limit: int = MAX_MESSAGE) -> list[Outgoing]:
    """Turn a batch of alerts into messages.

    Critical alerts come first, each in its own message. If ``merge_from`` or more
    non-critical alerts are queued (a backlog), they are merged in order into digest
    messages of at most ``limit`` characters; otherwise each is sent alone.
    """
    out = [Outgoing(split_text(format_alert(a), limit), (a.entry_id,), True)
           for a in alerts if a.critical]
    rest = [a for a in alerts if not a.critical]
    if len(rest) < merge_from:
        out += [Outgoing(split_text(format_alert(a), limit), (a.entry_id,), False) for a in rest]
        return out
    chunk: list[Alert] = []
    body_len = 0
    header_room = 40

    def flush() -> None:
        if not chunk:
            return
        if len(chunk) == 1:
            out.append(Outgoing(split_text(format_alert(chunk[0]), limit),
                                (chunk[0].entry_id,), False))
        else:
            header = f"📬 {len(chunk)} alerts (backlog merged)"
            body = "\n\n".join(format_alert(a) for a in chunk)
            out.append(Outgoing([f"{header}\n\n{body}"], tuple(a.entry_id for a in chunk),
                                False))
        chunk.clear()

    for alert in rest:
        size = len(format_alert(alert)) + 2
        if chunk and body_len + size + header_room > limit:
            flush()
            body_len = 0
        if size + header_room > limit:  # too big to merge: its own (split) message
            flush()
            body_len = 0
            out.append(Outgoing(split_text(format_alert(alert), limit), (alert.entry_id,),
                                False))
            continue
        chunk.append(alert)
        body_len += size
    flush()
    return out


def parse_chat_ids(value: str) -> list[str]:
    return [c.strip() for c in value.split(",") if c.strip()]


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _retry_after_seconds(exc: RetryAfter) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value: Any = exc.retry_after
    if isinstance(value, dtm.timedelta):
        return value.total_seconds()
    return float(value)


class PermanentRefusal(Exception):
    """Telegram refused a message for good (403 blocked/kicked, 400 bad request)."""

    def __init__(self, chat: str, cause: TelegramError) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.chat = chat


# --------------------------------------------------------------------------- worker


class ChatRateLimiter:
    """At most one send per ``interval`` seconds per chat."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._next: dict[str, float] = {}

    async def wait(self, chat: str) -> None:
        now = time.monotonic()
        slot = max(now, self._next.get(chat, 0.0))
        self._next[chat] = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


class TelegramWorker:
    """Outbox consumer; every coroutine is usable on its own (tests drive them directly)."""

    def __init__(
        self,
        client: aioredis.Redis,
        bot: telegram.Bot,
        chat_ids: Sequence[str],
        *,
        stream: str = names.ALERT_OUTBOX_STREAM,
        group: str = names.TELEGRAM_GROUP,
        consumer: str | None = None,
        block_ms: int = 1000,
        batch: int = 100,
        min_interval: float = 1.0,
        merge_from: int = 2,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        reclaim_idle_ms: int = 60_000,
        reclaim_every: float = 30.0,
        stop: asyncio.Event | None = None,
        dead_letters_key: str = names.TELEGRAM_DEAD_LETTERS_KEY,
    ) -> None:
        if not chat_ids:
            raise ValueError("at least one chat id is required")
        self.redis = client
        self.bot = bot
        self.chat_ids = list(chat_ids)
        self.stream = stream
        self.group = group
        self.consumer = consumer or consumer_name()
        self.block_ms = block_ms
        self.batch = batch
        self.merge_from = merge_from
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.reclaim_idle_ms = reclaim_idle_ms
        self.reclaim_every = reclaim_every
        self.limiter = ChatRateLimiter(min_interval)
        self.stop = stop or asyncio.Event()
        self.dead_letters_key = dead_letters_key
        self.sent_messages = 0
        self.acked = 0
        self.dead_lettered = 0

    # ---------------------------------------------------------------- redis side

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def reclaim(self, min_idle_ms: int = 0) -> list[Alert]:
        """XAUTOCLAIM every entry pending for at least ``min_idle_ms`` to this consumer."""
        alerts: list[Alert] = []
        start = "0-0"
        gone: list[str] = []
        while True:
            reply: list[Any] = await self.redis.xautoclaim(self.stream, self.group, self.consumer,
                                                min_idle_time=min_idle_ms, start_id=start,
                                                count=self.batch)
            start = _text(reply[0])
            for entry_id, fields in reply[1]:
                if fields is None:  # trimmed away (Redis < 7 reports it like this)
                    gone.append(_text(entry_id))
                else:
                    alerts.append(parse_entry(entry_id, fields))
            if start in ("0-0", "0"):
                break
        if gone:
            await self.redis.xack(self.stream, self.group, *gone)
            log.warning("outbox entries trimmed before delivery: %s", ", ".join(gone))
        if alerts:
            log.info("reclaimed %d pending alert(s)", len(alerts))
        return alerts

    async def read_new(self, block_ms: int | None = None) -> list[Alert]:
        """XREADGROUP ``>``: up to ``batch`` new alerts, blocking up to ``block_ms``."""
        block = self.block_ms if block_ms is None else block_ms
        reply: Any = await self.redis.xreadgroup(self.group, self.consumer, {self.stream: ">"},
                                            count=self.batch, block=block or None)
        alerts: list[Alert] = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                alerts.append(parse_entry(entry_id, fields or {}))
        return alerts

    async def ack(self, entry_ids: Sequence[str]) -> None:
        """XACK, retried until Redis takes it (a lost ack would mean a duplicate message)."""
        delay = self.backoff_initial
        while True:
            try:
                await self.redis.xack(self.stream, self.group, *entry_ids)
                self.acked += len(entry_ids)
                return
            except RedisError as exc:
                log.warning("XACK failed (%s); retrying in %.1fs", exc, delay)
                if await self._sleep(delay):
                    return
                delay = min(delay * 2, self.backoff_max)

    # ---------------------------------------------------------------- telegram side

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, waking early on stop; True if stopping."""
        if self.stop.is_set():
            return True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=max(seconds, 0.0))
        return self.stop.is_set()

    async def send(self, chat: str, text: str, reply_markup: Any = None) -> str | None:
        """Send one message, retrying until Telegram accepts it.

        Returns the chat id it was delivered to (it changes on ChatMigrated), or None if
        the worker is stopping (the entry then stays pending and is reclaimed later).
        Raises :class:`PermanentRefusal` when retrying cannot help.
        """
        attempt = 0
        while not self.stop.is_set():
            await self.limiter.wait(chat)
            try:
                await self.bot.send_message(chat_id=chat, text=text,
                                            disable_web_page_preview=True,
                                            reply_markup=reply_markup)
                self.sent_messages += 1
                return chat
            except RetryAfter as exc:
                delay = _retry_after_seconds(exc) + 0.1
                log.warning("telegram flood control for chat %s: retry in %.1fs", chat, delay)
            except ChatMigrated as exc:
                log.warning("chat %s migrated to %s", chat, exc.new_chat_id)
                new = str(exc.new_chat_id)
                self.chat_ids = [new if c == chat else c for c in self.chat_ids]
                chat = new
                continue
            except (Forbidden, BadRequest) as exc:
                raise PermanentRefusal(chat, exc) from exc
            except (InvalidToken, TelegramError) as exc:
                delay = min(self.backoff_initial * 2 ** attempt, self.backoff_max)
                level = logging.ERROR if attempt >= 3 else logging.WARNING
                log.log(level, "telegram send to %s failed (%s: %s); retry %d in %.1fs",
                        chat, type(exc).__name__, exc, attempt + 1, delay)
            attempt += 1
            if await self._sleep(delay):
                break
        return None

    async def deliver(self, alerts: Sequence[Alert]) -> bool:
        """Send a batch and ack each entry once every chat has it. False if stopped."""
        for message in plan_messages(alerts, self.merge_from):
            for chat in list(self.chat_ids):
                for index, part in enumerate(message.parts):
                    if (chat, index) in message.done:
                        continue
                    try:
                        delivered_to = await self.send(chat, part)
                    except PermanentRefusal as refusal:
                        await self.dead_letter(message, refusal)
                        break  # the other parts would be refused the same way
                    if delivered_to is None:
                        return False
                    message.done.add((delivered_to, index))
            await self.ack(message.entry_ids)
        return True

    async def dead_letter(self, message: Outgoing, refusal: PermanentRefusal) -> None:
        """Park one chat's copy of ``message`` in the dead-letter list, with the reason."""
        entry = {"entry_ids": list(message.entry_ids), "chat": refusal.chat,
                 "level": "critical" if message.critical else "info",
                 "text": "\n".join(message.parts)[:MAX_MESSAGE], "error": str(refusal),
                 "at": time.time()}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(self.dead_letters_key, json.dumps(entry))
            pipe.ltrim(self.dead_letters_key, 0, DEAD_LETTERS_KEPT - 1)
            await pipe.execute()
        self.dead_lettered += 1
        log.error("telegram refused alert %s for chat %s for good (%s); dead-lettered to %s, "
                  "not retried", ",".join(message.entry_ids), refusal.chat, refusal,
                  self.dead_letters_key)

    # ---------------------------------------------------------------- loop

    async def run(self) -> None:
        """Reclaim, then consume until ``stop`` is set. Redis outages are waited out."""
        delay = self.backoff_initial
        first = True
        next_reclaim = 0.0
        while not self.stop.is_set():
            try:
                await self.ensure_group() if first else None
                if time.monotonic() >= next_reclaim:
                    idle = 0 if first else self.reclaim_idle_ms
                    first = False
                    next_reclaim = time.monotonic() + self.reclaim_every
                    while not self.stop.is_set():
                        reclaimed = await self.reclaim(idle)
                        if not reclaimed or not await self.deliver(reclaimed):
                            break
                alerts = await self.read_new()
                if alerts:
                    await self.deliver(alerts)
                delay = self.backoff_initial
            except RedisError as exc:
                log.warning("redis error (%s); retrying in %.1fs", exc, delay)
                await self._sleep(delay)
                delay = min(delay * 2, self.backoff_max)


class CommandPoller:
    """Long-polls ``getUpdates`` and performs what :class:`CommandEngine` decides.

    The offset is saved in Redis after each update is handled, so an update is handled
    at most once per confirmed offset even across restarts.
    """

    def __init__(self, worker: TelegramWorker, engine: CommandEngine, *,
                 poll_timeout: int = 20, offset_key: str = names.TELEGRAM_OFFSET_KEY) -> None:
        self.worker = worker
        self.engine = engine
        self.poll_timeout = poll_timeout
        self.offset_key = offset_key
        self.handled = 0

    async def load_offset(self) -> int | None:
        raw = await self.worker.redis.get(self.offset_key)
        return int(raw) if raw else None

    async def save_offset(self, offset: int) -> None:
        await self.worker.redis.set(self.offset_key, offset)

    async def perform(self, action: Action) -> None:
        bot = self.worker.bot
        if isinstance(action, AnswerCallback):
            try:
                await bot.answer_callback_query(action.callback_id, text=action.text[:200])
            except TelegramError as exc:  # the button spinner just times out
                log.warning("answerCallbackQuery failed: %s", exc)
            return
        markup = None
        if action.buttons:
            markup = telegram.InlineKeyboardMarkup([[
                telegram.InlineKeyboardButton(label, callback_data=data)
                for label, data in action.buttons
            ]])
        for part in split_text(action.text):
            try:
                if await self.worker.send(action.chat_id, part, reply_markup=markup) is None:
                    return
            except PermanentRefusal as refusal:
                log.warning("reply to chat %s refused: %s", action.chat_id, refusal)
                return

    async def handle_batch(self, updates: Sequence[Any]) -> int | None:
        """Handle updates in order; returns the next offset (None if there were none)."""
        offset = None
        for update in updates:
            try:
                actions = await self.engine.handle(update)
                for action in actions:
                    await self.perform(action)
            except Exception:  # one bad update must not stop the commands
                log.exception("update %s could not be handled", update.update_id)
            self.handled += 1
            offset = update.update_id + 1
            await self.save_offset(offset)
        return offset

    async def run(self) -> None:
        stop = self.worker.stop
        delay = self.worker.backoff_initial
        offset: int | None = None
        loaded = False
        while not stop.is_set():
            try:
                if not loaded:
                    offset = await self.load_offset()
                    loaded = True
                poll = asyncio.ensure_future(self.worker.bot.get_updates(
                    offset=offset, timeout=self.poll_timeout,
                    allowed_updates=["message", "callback_query"]))
                stopping = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait({poll, stopping},
                                             return_when=asyncio.FIRST_COMPLETED)
                if poll not in done:
                    poll.cancel()
                    with contextlib.suppress(asyncio.CancelledError, TelegramError):
                        await poll
                    break
                stopping.cancel()
                updates = poll.result()
                if updates:
                    offset = await self.handle_batch(updates) or offset
                delay = self.worker.backoff_initial
            except (TelegramError, RedisError) as exc:
                log.warning("command polling failed (%s); retrying in %.1fs", exc, delay)
                await self.worker._sleep(delay)
                delay = min(delay * 2, self.worker.backoff_max)


# --------------------------------------------------------------------------- process


async def initialize_bot(bot: telegram.Bot, stop: asyncio.Event,
                         backoff_max: float = 10.0) -> bool:
    """``getMe`` until it works; InvalidToken is fatal (raised). False if stopped."""
    delay = 1.0
    while not stop.is_set():
        try:
            await bot.initialize()
            return True
        except InvalidToken:
            raise
        except TelegramError as exc:
            log.warning("telegram not reachable (%s); retrying in %.0fs", exc, delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            delay = min(delay * 2, backoff_max)
    return False


async def run_from_settings(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    client = async_redis_client(settings.redis_streams, socket_connect_timeout=5.0)
    bot = telegram.Bot(settings.telegram.token.get_secret_value(),
                       base_url=settings.telegram.api_base_url)
    chats = parse_chat_ids(settings.telegram.chat_id)
    worker = TelegramWorker(client, bot, chats, block_ms=settings.redis_streams.block_ms,
                            backoff_max=30.0, stop=stop)
    tg = settings.telegram
    engine = CommandEngine(
        RpcControl(settings.message_queue.amqp_uri), chats, RedisConfirmStore(client),
        allowed_users=tg.allowed_user_ids,
        confirm_key=confirm_key(tg.confirm_secret.get_secret_value(),
                                settings.security.webhook_secret.get_secret_value()))
    if not tg.allowed_user_ids:
        log.warning("telegram.allowed_user_ids is empty: in group chats every member may "
                    "read, nobody may trade; set it to the traders' Telegram user ids")
    commands = CommandPoller(worker, engine, poll_timeout=settings.telegram.command_poll_timeout)
    try:
        if not await initialize_bot(bot, stop):
            return
        log.info("telegram worker %s delivering %s to %d chat(s), answering commands",
                 worker.consumer, worker.stream, len(worker.chat_ids))
        await asyncio.gather(worker.run(), commands.run())
    finally:
        with contextlib.suppress(Exception):
            await bot.shutdown()
        await client.aclose()
        log.info("telegram worker stopped (%d sent, %d acked)", worker.sent_messages,
                 worker.acked)


def main() -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = settings_or_exit()
    if not settings.telegram.active:
        print("telegram worker: telegram.token and telegram.chat_id are not configured "
              "(set PHOENIX__TELEGRAM__TOKEN and PHOENIX__TELEGRAM__CHAT_ID)", file=sys.stderr)
        return 2
    # one worker polls getUpdates (two would conflict): the one leading telegram_polling
    lease = LeaderLease.from_settings(
        redis_client(settings.redis_streams, socket_timeout=5.0, socket_connect_timeout=5.0),
        names.DUTY_TELEGRAM_POLLING, f"telegram-worker-{consumer_name()}", settings)
    try:
        asyncio.run(run_while_leading(lease, settings.high_availability.leader_renew_s,
                                      lambda stop: run_from_settings(settings, stop)))
    except InvalidToken as exc:
        print(f"telegram worker: the bot token was rejected by Telegram ({exc})",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
