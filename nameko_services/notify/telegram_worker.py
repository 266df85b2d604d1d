"""Telegram worker: drains the durable alert outbox into Telegram and answers commands.

    python -m nameko_services.notify.telegram_worker

A python-telegram-bot :class:`~telegram.ext.Application` (plain asyncio, no eventlet):

* a :class:`~telegram.ext.JobQueue` job (``OutboxDelivery.drain`` in
  :mod:`~nameko_services.notify.telegram_delivery`, every ``DRAIN_INTERVAL_S``, waiting on
  the stream for most of it) reads ``names.ALERT_OUTBOX_STREAM`` through the consumer group
  ``names.TELEGRAM_GROUP`` (consumer ``<host>-<pid>``), first reclaiming entries a dead
  worker left pending (XAUTOCLAIM), and sends each alert to every chat in
  ``telegram.chat_id``. An entry is XACKed only after Telegram accepted it in every chat
  (or that chat's copy was dead-lettered). Transient failures are retried until the worker
  stops (tenacity, exponential back-off; ``RetryAfter`` honoured), so nothing is dropped.
  A permanent refusal (403 bot blocked/kicked; 400 chat not found, bad request) is not
  retried: that chat's copy goes to the dead-letter list ``names.TELEGRAM_DEAD_LETTERS_KEY``
  with an error in the log and the later alerts keep flowing. When a backlog builds,
  non-critical alerts are merged into digests while every critical one is sent first and
  alone (:mod:`~nameko_services.notify.telegram_format`; criticals are never trimmed from
  the outbox, see :mod:`~nameko_services.notify.outbox`).
* :class:`ChatRateLimiter` (PTB's ``AIORateLimiter``: 30 messages/s overall, 20/min per
  group, ``RetryAfter`` retried) adds at most one message per second to any one chat.
* ``CommandHandler``s and a ``CallbackQueryHandler`` hand the trader's commands and the
  inline Confirm/Cancel presses to :class:`~nameko_services.notify.commands.CommandEngine`
  (chat and user authorisation, HMAC-sealed confirmations bound to the asker, RPC in
  threads). The updater long-polls ``getUpdates`` on its own HTTP connection pool, so
  polling never delays an alert. The last handled update id is kept in Redis
  (``names.TELEGRAM_OFFSET_KEY``): an update Telegram serves again after a crash is skipped.
  :func:`start_commands` is the one place polling starts (Telegram allows one poller per
  bot: wrap it to make it a leader's duty).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any, Final

import redis.asyncio as aioredis
import telegram
import tenacity
from telegram.error import InvalidToken, TelegramError
from telegram.ext import (
    Application,
    ApplicationBuilder,
    ApplicationHandlerStop,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    TypeHandler,
    filters,
)

from nameko_services.notify.commands import (
    Action,
    AnswerCallback,
    CommandEngine,
    RedisConfirmStore,
    RpcControl,
    confirm_key,
)
from nameko_services.notify.telegram_delivery import (
    DRAIN_INTERVAL_S,
    ChatRateLimiter,
    OutboxDelivery,
    PermanentRefusal,
    Sender,
    sleep_unless,
)
from nameko_services.notify.telegram_format import parse_chat_ids, split_text
from shared import names
from shared.redis_conn import async_redis_client
from shared.settings import Settings, settings_or_exit

log = logging.getLogger("phoenix95.telegram_worker")

App = Application[Any, Any, Any, Any, Any, Any]
COMMANDS: Final = ("start", "help", "status", "positions", "pnl", "close", "closeall",
                   "pause", "halt", "resume")
ALLOWED_UPDATES: Final = ["message", "callback_query"]


# --------------------------------------------------------------------------- commands


class Commands:
    """PTB handler callbacks around :class:`CommandEngine`, which decides everything."""

    def __init__(self, engine: CommandEngine, sender: Sender, client: aioredis.Redis, *,
                 offset_key: str = names.TELEGRAM_OFFSET_KEY) -> None:
        self.engine = engine
        self.sender = sender
        self.redis = client
        self.offset_key = offset_key
        self.handled = 0
        self._offset: int | None = None

    async def skip_handled(self, update: telegram.Update, context: Any) -> None:
        """Group -1: an update at or below the saved offset was handled before a crash."""
        if self._offset is None:
            raw = await self.redis.get(self.offset_key)
            self._offset = int(raw) if raw else 0
        if update.update_id < self._offset:
            log.info("update %s was handled before; skipped", update.update_id)
            raise ApplicationHandlerStop

    async def mark_handled(self, update: telegram.Update, context: Any) -> None:
        """Last group: runs after the command, even if it failed."""
        self._offset = update.update_id + 1
        self.handled += 1
        await self.redis.set(self.offset_key, self._offset)

    async def on_update(self, update: telegram.Update, context: Any) -> None:
        for action in await self.engine.handle(update):
            await self.perform(action)

    async def perform(self, action: Action) -> None:
        if isinstance(action, AnswerCallback):
            try:
                await self.sender.bot.answer_callback_query(action.callback_id,
                                                            text=action.text[:200])
            except TelegramError as exc:  # the button spinner just times out
                log.warning("answerCallbackQuery failed: %s", exc)
            return
        markup = None
        if action.buttons:
            markup = telegram.InlineKeyboardMarkup([[
                telegram.InlineKeyboardButton(label, callback_data=data)
                for label, data in action.buttons]])
        for part in split_text(action.text):
            try:
                if await self.sender.send(action.chat_id, part, reply_markup=markup) is None:
                    return
            except PermanentRefusal as refusal:
                log.warning("reply to chat %s refused: %s", action.chat_id, refusal)
                return


async def _log_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    where = f"update {update.update_id}" if isinstance(update, telegram.Update) else "a job"
    log.error("%s failed: %r", where, context.error, exc_info=context.error)


class _SkippedRun(logging.Filter):
    """A drain still busy (Telegram down, retrying) makes APScheduler skip the next run and
    say so at WARNING every interval; that is the intended back-pressure, not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances" not in record.getMessage()


# --------------------------------------------------------------------------- application


def build_application(token: str, base_url: str, *, min_interval: float = 1.0) -> App:
    """The PTB Application: ``base_url`` points at Telegram or a local Bot API stand-in."""
    return (ApplicationBuilder().token(token).base_url(base_url)
            .rate_limiter(ChatRateLimiter(min_interval)).build())


def install(app: App, delivery: OutboxDelivery, commands: Commands | None = None, *,
            drain_interval: float = DRAIN_INTERVAL_S) -> None:
    """Schedule the outbox job and register the command handlers."""
    if app.job_queue is None:
        raise RuntimeError("python-telegram-bot[job-queue] is not installed")
    scheduler_log = logging.getLogger("apscheduler.scheduler")
    if not any(isinstance(f, _SkippedRun) for f in scheduler_log.filters):
        scheduler_log.addFilter(_SkippedRun())
    app.job_queue.run_repeating(delivery.drain, interval=drain_interval, first=0,
                                name="outbox", job_kwargs={"max_instances": 1,
                                                           "coalesce": True,
                                                           "misfire_grace_time": None})
    if commands is not None:
        app.add_handler(TypeHandler(telegram.Update, commands.skip_handled), group=-1)
        app.add_handler(CommandHandler(COMMANDS, commands.on_update))
        app.add_handler(MessageHandler(filters.COMMAND, commands.on_update))  # unknown: help
        app.add_handler(CallbackQueryHandler(commands.on_update))  # Confirm / Cancel
        app.add_handler(TypeHandler(telegram.Update, commands.mark_handled), group=1)
    app.add_error_handler(_log_error)


async def start_commands(app: App, poll_timeout: int) -> None:
    """Start long-polling ``getUpdates`` for the commands. Telegram serves one poller per
    bot (a second gets 409 Conflict): with several workers, only a leader calls this."""
    if app.updater is None:
        raise RuntimeError("the application has no updater")
    await app.updater.start_polling(
        timeout=poll_timeout, allowed_updates=ALLOWED_UPDATES, drop_pending_updates=False,
        bootstrap_retries=3,
        error_callback=lambda exc: log.warning("command polling failed: %s", exc))


async def initialize(app: App, stop: asyncio.Event) -> bool:
    """``getMe`` until it works; InvalidToken is fatal (raised). False if stopped."""
    retrying = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(
            lambda e: isinstance(e, TelegramError) and not isinstance(e, InvalidToken)),
        wait=tenacity.wait_exponential(min=1, max=10), stop=lambda _s: stop.is_set(),
        sleep=lambda seconds: sleep_unless(stop, seconds), reraise=True,
        before_sleep=lambda s: log.warning("telegram not reachable (%s); retrying",
                                           s.outcome.exception() if s.outcome else "?"))
    try:
        await retrying(app.initialize)
    except TelegramError as exc:
        if isinstance(exc, InvalidToken) or not stop.is_set():
            raise
        return False
    return True


async def serve(app: App, stop: asyncio.Event, *, commands: bool = True,
                poll_timeout: int = 20) -> None:
    """Run ``app`` until ``stop`` is set: the outbox job always, the commands if asked."""
    try:
        if not await initialize(app, stop):
            return
        await app.start()
        if commands:
            await start_commands(app, poll_timeout)
        await stop.wait()
    finally:
        if app.updater is not None and app.updater.running:
            await app.updater.stop()
        if app.running:
            await app.stop()  # waits for a running drain, which returns once stop is set
        await app.shutdown()


async def run_from_settings(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    tg = settings.telegram
    client = async_redis_client(settings.redis_streams, socket_connect_timeout=5.0)
    app = build_application(tg.token.get_secret_value(), tg.api_base_url)
    sender = Sender(app.bot, stop, backoff_max=30.0)
    chats = parse_chat_ids(tg.chat_id)
    delivery = OutboxDelivery(client, sender, chats)
    engine = CommandEngine(
        RpcControl(settings.message_queue.amqp_uri), chats, RedisConfirmStore(client),
        allowed_users=tg.allowed_user_ids,
        confirm_key=confirm_key(tg.confirm_secret.get_secret_value(),
                                settings.security.webhook_secret.get_secret_value()))
    if not tg.allowed_user_ids:
        log.warning("telegram.allowed_user_ids is empty: in group chats every member may "
                    "read, nobody may trade; set it to the traders' Telegram user ids")
    install(app, delivery, Commands(engine, sender, client))
    log.info("telegram worker %s delivering %s to %d chat(s), answering commands",
             delivery.consumer, delivery.stream, len(chats))
    try:
        await serve(app, stop, poll_timeout=tg.command_poll_timeout)
    finally:
        await client.aclose()
        log.info("telegram worker stopped (%d sent, %d acked)", sender.sent_messages,
                 delivery.acked)


def main() -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = settings_or_exit()
    if not settings.telegram.active:
        print("telegram worker: telegram.token and telegram.chat_id are not configured "
              "(set PHOENIX__TELEGRAM__TOKEN and PHOENIX__TELEGRAM__CHAT_ID)", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_from_settings(settings))
    except InvalidToken as exc:
        print(f"telegram worker: the bot token was rejected by Telegram ({exc})",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
