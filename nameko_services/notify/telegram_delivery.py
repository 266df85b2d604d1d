"""Getting alerts from the outbox into Telegram: :class:`OutboxDelivery` (the JobQueue job
that reads, plans, sends, acks and dead-letters), :class:`Sender` (one message, retried) and
:class:`ChatRateLimiter`. See :mod:`nameko_services.notify.telegram_worker` for the
behaviour as a whole."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final

import redis.asyncio as aioredis
import telegram
import tenacity
from aiolimiter import AsyncLimiter
from redis.exceptions import RedisError, ResponseError
from telegram.error import BadRequest, ChatMigrated, Forbidden, RetryAfter, TelegramError
from telegram.ext import AIORateLimiter

from nameko_services.notify.outbox import DEAD_LETTERS_KEPT
from nameko_services.notify.telegram_format import (
    MAX_MESSAGE,
    Alert,
    Outgoing,
    as_text,
    parse_entry,
    plan_messages,
)
from shared import names

log = logging.getLogger("phoenix95.telegram_worker")

# The job runs every second and spends up to 0.9 s of it in a blocking XREADGROUP, so an
# alert appended while it waits goes out at once; one appended in the 0.1 s gap waits for the
# next run. Measured append -> Telegram: median 17 ms, max 67 ms, 0.1 % of a core idle (a
# non-blocking job every 0.1 s: 50 ms / 178 ms / 1.0 %; the former hand-written loop 12/34 ms).
DRAIN_INTERVAL_S: Final = 1.0
READ_BLOCK_MS: Final = 900
NO_PREVIEW: Final = telegram.LinkPreviewOptions(is_disabled=True)


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class PermanentRefusal(Exception):
    """Telegram refused a message for good (403 blocked/kicked, 400 bad request)."""

    def __init__(self, chat: str, cause: TelegramError) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.chat = chat


# --------------------------------------------------------------------------- sending


class ChatRateLimiter(AIORateLimiter):
    """``AIORateLimiter`` plus at most one request per ``interval`` seconds to each chat.

    AIORateLimiter limits the bot overall and each group; Telegram also throttles a single
    private chat (about one message a second), which it leaves to the caller.
    """

    def __init__(self, interval: float = 1.0, max_retries: int = 3) -> None:
        super().__init__(max_retries=max_retries)
        self.interval = interval
        self._chats: dict[str, AsyncLimiter] = {}

    async def process_request(
        self, callback: Callable[..., Coroutine[Any, Any, Any]], args: Any,
        kwargs: dict[str, Any], endpoint: str, data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> Any:
        chat = data.get("chat_id")
        if chat is not None and self.interval > 0:
            limiter = self._chats.get(str(chat))
            if limiter is None:
                limiter = self._chats[str(chat)] = AsyncLimiter(1, self.interval)
            await limiter.acquire()
        return await super().process_request(callback, args, kwargs, endpoint, data,
                                             rate_limit_args)


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, waking early when ``stop`` is set."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(seconds, 0.0))


def _retry_after_seconds(exc: RetryAfter) -> float:
    with warnings.catch_warnings():  # PTB 22 warns that it becomes a timedelta: both handled
        warnings.simplefilter("ignore")
        value: Any = exc.retry_after
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


class Sender:
    """One message to one chat, retried until Telegram accepts it or the worker stops."""

    def __init__(self, bot: telegram.Bot, stop: asyncio.Event, *,
                 backoff_initial: float = 1.0, backoff_max: float = 60.0) -> None:
        self.bot = bot
        self.stop = stop
        self._backoff = tenacity.wait_exponential(multiplier=backoff_initial,
                                                  min=backoff_initial, max=backoff_max)
        self.sent_messages = 0

    async def sleep(self, seconds: float) -> None:
        await sleep_unless(self.stop, seconds)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryAfter):
            return _retry_after_seconds(exc) + 0.1
        if isinstance(exc, ChatMigrated):
            return 0.0
        return float(self._backoff(state))

    def retrying(self, what: Callable[[], str]) -> tenacity.AsyncRetrying:
        """Retry any TelegramError (a PermanentRefusal is not one) until stopping."""
        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            level = logging.ERROR if state.attempt_number > 3 else logging.WARNING
            log.log(level, "%s failed (%s: %s); retry %d in %.1fs", what(),
                    type(exc).__name__, exc, state.attempt_number,
                    state.upcoming_sleep)

        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(TelegramError), wait=self._wait,
            stop=lambda _state: self.stop.is_set(), sleep=self.sleep,
            before_sleep=before_sleep, reraise=True)

    async def send(self, chat: str, text: str, reply_markup: Any = None) -> str | None:
        """The chat id it was delivered to (it changes on ChatMigrated), or None if the
        worker is stopping (an outbox entry then stays pending and is reclaimed later).
        Raises :class:`PermanentRefusal` when retrying cannot help."""
        if self.stop.is_set():
            return None
        target = [chat]

        async def attempt() -> None:
            try:
                await self.bot.send_message(chat_id=target[0], text=text,
                                            link_preview_options=NO_PREVIEW,
                                            reply_markup=reply_markup)
            except ChatMigrated as exc:
                log.warning("chat %s migrated to %s", target[0], exc.new_chat_id)
                target[0] = str(exc.new_chat_id)
                raise
            except (Forbidden, BadRequest) as exc:
                raise PermanentRefusal(target[0], exc) from exc

        try:
            await self.retrying(lambda: f"telegram send to {target[0]}")(attempt)
        except TelegramError:  # only raised once stopping
            return None
        self.sent_messages += 1
        return target[0]


# --------------------------------------------------------------------------- outbox


class OutboxDelivery:
    """The outbox consumer; :meth:`drain` is the JobQueue job (tests call it directly)."""

    def __init__(self, client: aioredis.Redis, sender: Sender, chat_ids: Sequence[str], *,
                 stream: str = names.ALERT_OUTBOX_STREAM, group: str = names.TELEGRAM_GROUP,
                 consumer: str | None = None, batch: int = 100, merge_from: int = 2,
                 reclaim_idle_ms: int = 60_000, reclaim_every: float = 30.0,
                 block_ms: int = READ_BLOCK_MS,
                 dead_letters_key: str = names.TELEGRAM_DEAD_LETTERS_KEY) -> None:
        if not chat_ids:
            raise ValueError("at least one chat id is required")
        self.redis = client
        self.sender = sender
        self.chat_ids = list(chat_ids)
        self.stream = stream
        self.group = group
        self.consumer = consumer or consumer_name()
        self.batch = batch
        self.merge_from = merge_from
        self.reclaim_idle_ms = reclaim_idle_ms
        self.reclaim_every = reclaim_every
        self.block_ms = block_ms
        self.dead_letters_key = dead_letters_key
        self.acked = 0
        self.dead_lettered = 0
        self._started = False
        self._next_reclaim = 0.0
        self._redis_down = False

    @property
    def stopping(self) -> bool:
        return self.sender.stop.is_set()

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
            reply: list[Any] = await self.redis.xautoclaim(
                self.stream, self.group, self.consumer, min_idle_time=min_idle_ms,
                start_id=start, count=self.batch)
            start = as_text(reply[0])
            for entry_id, fields in reply[1]:
                if fields is None:  # trimmed away (Redis < 7 reports it like this)
                    gone.append(as_text(entry_id))
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

    async def read_new(self, block_ms: int = 0) -> list[Alert]:
        """XREADGROUP ``>``: up to ``batch`` new alerts, waiting up to ``block_ms`` (0: not)."""
        reply: Any = await self.redis.xreadgroup(self.group, self.consumer,
                                                 {self.stream: ">"}, count=self.batch,
                                                 block=block_ms or None)
        return [parse_entry(entry_id, fields or {})
                for _stream, entries in reply or [] for entry_id, fields in entries]

    async def ack(self, entry_ids: Sequence[str]) -> None:
        """XACK, retried until Redis takes it (a lost ack would mean a duplicate message)."""
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(RedisError),
            wait=tenacity.wait_exponential(multiplier=0.5, max=30),
            stop=lambda _state: self.stopping, sleep=self.sender.sleep, reraise=True,
            before_sleep=lambda s: log.warning("XACK failed (%s); retrying",
                                               s.outcome.exception() if s.outcome else "?"))
        with contextlib.suppress(RedisError):  # stopping: the entry is reclaimed later
            await retrying(self.redis.xack, self.stream, self.group, *entry_ids)
            self.acked += len(entry_ids)

    async def deliver(self, alerts: Sequence[Alert]) -> bool:
        """Send a batch and ack each entry once every chat has it. False if stopped."""
        for message in plan_messages(alerts, self.merge_from):
            for chat in list(self.chat_ids):
                for index, part in enumerate(message.parts):
                    if (chat, index) in message.done:
                        continue
                    try:
                        delivered_to = await self.sender.send(chat, part)
                    except PermanentRefusal as refusal:
                        await self.dead_letter(message, refusal)
                        break  # the other parts would be refused the same way
                    if delivered_to is None:
                        return False
                    if delivered_to != chat:  # migrated: send there from now on
                        self.chat_ids = [delivered_to if c == chat else c
                                         for c in self.chat_ids]
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

    async def drain(self, context: Any = None) -> None:
        """One pass: reclaim when due (everything pending on the first pass), then deliver
        what is new, waiting for more for up to ``block_ms``. A Redis outage waits for the
        next pass."""
        until = time.monotonic() + self.block_ms / 1000
        try:
            if not self._started:
                await self.ensure_group()
            if time.monotonic() >= self._next_reclaim:
                idle = self.reclaim_idle_ms if self._started else 0
                while not self.stopping:
                    reclaimed = await self.reclaim(idle)
                    if not reclaimed or not await self.deliver(reclaimed):
                        break
                self._started = True  # after a reclaim that worked: a failed one is redone
                self._next_reclaim = time.monotonic() + self.reclaim_every
            while not self.stopping:
                wait_ms = int((until - time.monotonic()) * 1000)
                alerts = await self.read_new(max(wait_ms, 0))
                if not alerts or not await self.deliver(alerts):
                    break
        except RedisError as exc:
            if "NOGROUP" in str(exc):  # the stream was deleted: create the group again
                self._started, self._next_reclaim = False, 0.0
            if not self._redis_down:  # once per outage, not every pass
                log.warning("outbox: redis error (%s); retrying every %.2fs", exc,
                            DRAIN_INTERVAL_S)
            self._redis_down = True
            return
        if self._redis_down:
            log.info("outbox: redis is back")
            self._redis_down = False
