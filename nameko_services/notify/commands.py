"""Telegram commands: parse an update, check the chat and user, confirm, call the services.

Only chats listed in ``telegram.chat_id`` are answered; an update from any other chat
produces no action at all (not even an ``answerCallbackQuery``). Inside an allowed chat
the sender must be in ``telegram.allowed_user_ids``; while that list is empty, a private
chat's own user may do everything and a group's members only read (a group member could
otherwise ``/closeall``). Destructive commands
(``/close``, ``/closeall``, ``/pause``, ``/halt``, ``/resume``) first answer with an inline
"Confirm / Cancel" keyboard; the pending action is stored (Redis, with a TTL) under a
random token carried in the button's callback data, so a confirmation survives a worker
restart and an old button cannot be replayed after it expired or was used. The pending
action is bound to the user who asked (only they can press Confirm) and sealed with an
HMAC, so whoever can write to Redis still cannot change what a press will do.

The engine is asyncio; every RPC goes through ``run_blocking`` (``asyncio.to_thread``), so
a slow service never blocks the alert sender running in the same event loop.
"""

from __future__ import annotations

import asyncio
import datetime as dtm
import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Protocol

import redis.asyncio as aioredis

from shared import names

log = logging.getLogger("phoenix95.telegram_commands")

CONFIRM_TTL_S: Final = 120
MAX_COMMAND_AGE_S: Final = 600  # older messages (e.g. queued while down) are not executed
SYMBOL_RE: Final = re.compile(r"^[A-Z0-9]{2,20}$")
HELP: Final = (
    "Phoenix 95 commands\n"
    "/status – trading state, equity, margin, exposure\n"
    "/positions – open positions with uPnL and liquidation distance\n"
    "/pnl – daily PnL (risk's: realised, net of fees, since 00:00 UTC), unrealised now\n"
    "/close SYMBOL – close one position (asks to confirm)\n"
    "/closeall – close every position (asks to confirm)\n"
    "/pause – REDUCING: closes only, no new entries (asks to confirm)\n"
    "/halt – HALTED: nothing new is traded (asks to confirm)\n"
    "/resume – back to ACTIVE (asks to confirm)\n"
    "/help – this list"
)
STATE_OF: Final = {"pause": "REDUCING", "halt": "HALTED", "resume": "ACTIVE"}
DESTRUCTIVE: Final = ("close", "closeall", "pause", "halt", "resume")


# --------------------------------------------------------------------------- boundary


class Control(Protocol):
    """What the commands need from the services (Nameko RPC in production)."""

    def risk_status(self) -> dict[str, Any]: ...

    def set_state(self, state: str, reason: str) -> dict[str, Any]: ...

    def positions(self) -> list[dict[str, Any]]: ...

    def close(self, symbol: str) -> dict[str, Any]: ...

    def close_all(self) -> list[dict[str, Any]]: ...

    def trades(self, limit: int) -> list[dict[str, Any]]: ...


class RpcControl:
    """:class:`Control` over ``nameko.standalone.rpc.ClusterRpcProxy`` (blocking).

    One short-lived proxy per call: kombu connections are not thread-safe, and commands
    are rare, so the connection setup (a few ms) is not worth sharing a proxy for.
    """

    def __init__(self, amqp_uri: str, timeout: float = 15.0) -> None:
        self._config = {"AMQP_URI": amqp_uri}
        self._timeout = timeout

    def _call(self, service: str, method: str, *args: Any) -> Any:
        from nameko.standalone.rpc import ClusterRpcProxy

        with ClusterRpcProxy(self._config, timeout=self._timeout) as rpc:
            return getattr(getattr(rpc, service), method)(*args)

    def risk_status(self) -> dict[str, Any]:
        return dict(self._call(names.RISK, "status"))

    def set_state(self, state: str, reason: str) -> dict[str, Any]:
        return dict(self._call(names.RISK, "set_state", state, reason))

    def positions(self) -> list[dict[str, Any]]:
        return list(self._call(names.EXECUTE, "positions") or [])

    def close(self, symbol: str) -> dict[str, Any]:
        return dict(self._call(names.EXECUTE, "close", symbol))

    def close_all(self) -> list[dict[str, Any]]:
        return list(self._call(names.EXECUTE, "close_all") or [])

    def trades(self, limit: int) -> list[dict[str, Any]]:
        return list(self._call(names.EXECUTE, "trades", limit) or [])


class ConfirmStore(Protocol):
    async def put(self, token: str, payload: dict[str, str], ttl_s: int) -> None: ...

    async def take(self, token: str) -> dict[str, str] | None: ...


class RedisConfirmStore:
    """Pending confirmations as ``SET key value EX ttl``; taken once with ``GETDEL``."""

    def __init__(self, client: aioredis.Redis,
                 prefix: str = names.TELEGRAM_CONFIRM_PREFIX) -> None:
        self._client = client
        self._prefix = prefix

    async def put(self, token: str, payload: dict[str, str], ttl_s: int) -> None:
        await self._client.set(self._prefix + token, json.dumps(payload), ex=ttl_s)

    async def take(self, token: str) -> dict[str, str] | None:
        raw = await self._client.getdel(self._prefix + token)
        if raw is None:
            return None
        loaded = json.loads(raw)
        return {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else None


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Reply:
    """A message to send; ``buttons`` are (label, callback data) on one row."""

    chat_id: str
    text: str
    buttons: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class AnswerCallback:
    callback_id: str
    text: str


Action = Reply | AnswerCallback


@dataclass(frozen=True)
class Incoming:
    """The parts of a Telegram update the engine looks at."""

    chat_id: str
    text: str = ""
    callback_id: str = ""
    callback_data: str = ""
    user: str = ""
    date: dtm.datetime | None = None
    user_id: str = ""  # Telegram's numeric user id; "" = unknown (channel posts)

    @classmethod
    def from_update(cls, update: Any) -> Incoming | None:
        """From a ``telegram.Update``; None for updates without a chat."""
        query = getattr(update, "callback_query", None)
        if query is not None:
            message = query.message
            if message is None:
                return None
            return cls(str(message.chat.id), callback_id=str(query.id),
                       callback_data=str(query.data or ""), user=_user(query.from_user),
                       user_id=_user_id(query.from_user))
        message = getattr(update, "message", None) or getattr(update, "channel_post", None)
        if message is None or message.text is None:
            return None
        sender = getattr(message, "from_user", None)
        return cls(str(message.chat.id), text=str(message.text),
                   user=_user(sender), date=message.date, user_id=_user_id(sender))


def _user_id(user: Any) -> str:
    uid = getattr(user, "id", None) if user is not None else None
    return str(uid) if uid is not None else ""


def _user(user: Any) -> str:
    if user is None:
        return "unknown"
    return str(getattr(user, "username", None) or getattr(user, "first_name", None)
               or getattr(user, "id", "unknown"))


def confirm_key(confirm_secret: str, webhook_secret: str) -> bytes:
    """The confirmation HMAC key: its own secret, else one derived from the webhook's."""
    if confirm_secret:
        return confirm_secret.encode()
    return hmac.new(webhook_secret.encode(), b"phoenix95/telegram-confirm",
                    hashlib.sha256).digest()


SEALED: Final = ("command", "arg", "chat", "user_id", "user", "expires")


def seal(key: bytes, token: str, payload: dict[str, str]) -> str:
    """HMAC-SHA256 over the token and the fields that decide what a press does."""
    body = json.dumps([token, *(payload.get(f, "") for f in SEALED)], separators=(",", ":"))
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def parse_command(text: str) -> tuple[str, list[str]] | None:
    """``"/close@bot btcusdt"`` -> ``("close", ["btcusdt"])``; None if not a command."""
    parts = text.strip().split()
    if not parts or not parts[0].startswith("/") or len(parts[0]) < 2:
        return None
    return parts[0][1:].split("@", 1)[0].lower(), parts[1:]


# --------------------------------------------------------------------------- formatting


def _dec(value: Any) -> Decimal | None:
    try:
        return None if value in (None, "") else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def fmt_money(value: Any) -> str:
    d = _dec(value)
    return "—" if d is None else f"{d:,.2f}"


def liquidation_distance(position: dict[str, Any]) -> Decimal | None:
    """Distance from the mark (else entry) price to liquidation, as a fraction."""
    liq = _dec(position.get("liquidation_price"))
    ref = _dec(position.get("mark_price")) or _dec(position.get("entry_price"))
    if liq is None or ref is None or ref == 0 or liq <= 0:
        return None
    return abs(ref - liq) / ref


def format_status(status: dict[str, Any]) -> str:
    positions = status.get("open_positions")
    count = len(positions) if isinstance(positions, list) else positions
    usage = _dec(status.get("margin_usage"))
    lines = [
        f"State: {status.get('state', '?')}"
        + (f" ({status['reason']})" if status.get("reason") else ""),
        f"Equity: {fmt_money(status.get('equity'))} USDT "
        f"(available {fmt_money(status.get('available'))})",
        f"Margin used: {fmt_money(status.get('margin_used'))} USDT"
        + (f" ({usage * 100:.1f}% of equity)" if usage is not None else ""),
        f"Exposure: {fmt_money(status.get('exposure'))} USDT",
        f"Open positions: {count if count is not None else '—'}",
    ]
    if status.get("daily_pnl") is not None:
        lines.append(f"{DAILY_PNL_LABEL}: {fmt_money(status.get('daily_pnl'))} USDT")
    return "\n".join(lines)


def format_positions(positions: Sequence[dict[str, Any]]) -> str:
    if not positions:
        return "No open positions."
    lines = [f"{len(positions)} open position(s)"]
    for p in positions:
        dist = liquidation_distance(p)
        lines.append(
            f"• {p.get('symbol')} {p.get('side')} {p.get('quantity')} @ {p.get('entry_price')} "
            f"x{p.get('leverage', '?')}\n"
            f"  mark {p.get('mark_price', '—')} · uPnL {fmt_money(p.get('unrealized_pnl'))} USDT\n"
            f"  SL {p.get('stop_loss') or '—'} · TP {p.get('take_profit') or '—'} · "
            f"liq {p.get('liquidation_price') or '—'}"
            + (f" ({dist * 100:.2f}% away)" if dist is not None else "")
        )
    return "\n".join(lines)


def pnl_summary(trades: Iterable[dict[str, Any]], positions: Iterable[dict[str, Any]],
                today: dtm.date, daily_pnl: Any = None) -> dict[str, Decimal | int | None]:
    """``daily_pnl``: risk's figure (``risk.status()["daily_pnl"]``, the one definition:
    see nameko_services/risk/ledger.py), None when risk did not answer. The closed trades
    give the counts and the overall sum; open positions the unrealised PnL, shown apart."""
    realized_total = Decimal(0)
    wins = losses = closed_today = 0
    for t in trades:
        pnl = _dec(t.get("realized_pnl"))
        if pnl is None:
            continue
        realized_total += pnl
        closed_at = str(t.get("closed_at") or "")
        if closed_at[:10] == today.isoformat():
            closed_today += 1
            wins += pnl > 0
            losses += pnl < 0
    unrealized = sum((_dec(p.get("unrealized_pnl")) or Decimal(0) for p in positions),
                     Decimal(0))
    return {"realized_today": _dec(daily_pnl), "realized_total": realized_total,
            "unrealized": unrealized, "closed_today": closed_today, "wins": wins,
            "losses": losses}


DAILY_PNL_LABEL: Final = "Daily PnL (realised, net of fees, since 00:00 UTC)"


def format_pnl(summary: dict[str, Decimal | int | None], today: dtm.date) -> str:
    return (
        f"PnL {today.isoformat()} (UTC)\n"
        f"{DAILY_PNL_LABEL}: {fmt_money(summary['realized_today'])} USDT\n"
        f"Closed today: {summary['closed_today']} ({summary['wins']} won, "
        f"{summary['losses']} lost)\n"
        f"Unrealised now: {fmt_money(summary['unrealized'])} USDT\n"
        f"Realised, last trades overall: {fmt_money(summary['realized_total'])} USDT"
    )


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


# --------------------------------------------------------------------------- engine

Blocking = Callable[..., Awaitable[Any]]


class CommandEngine:
    """Turn one update into the actions to perform (messages, callback answers)."""

    def __init__(
        self,
        control: Control,
        allowed_chats: Iterable[str],
        confirmations: ConfirmStore,
        *,
        run_blocking: Blocking = asyncio.to_thread,
        now: Callable[[], dtm.datetime] = lambda: dtm.datetime.now(dtm.UTC),
        confirm_ttl_s: int = CONFIRM_TTL_S,
        allowed_users: Iterable[int | str] = (),
        confirm_key: bytes = b"",
    ) -> None:
        self.control = control
        self.allowed = {str(c).strip() for c in allowed_chats if str(c).strip()}
        self.allowed_users = {str(u).strip() for u in allowed_users if str(u).strip()}
        # no key given: a per-process one (pending confirmations die with the process)
        self.key = confirm_key or secrets.token_bytes(32)
        self.confirmations = confirmations
        self.run_blocking = run_blocking
        self.now = now
        self.confirm_ttl_s = confirm_ttl_s

    def authorized(self, chat_id: str) -> bool:
        return chat_id in self.allowed

    def user_may(self, msg: Incoming, destructive: bool) -> bool:
        """The sender may run this command in this (already allowed) chat."""
        if self.allowed_users:
            return msg.user_id in self.allowed_users
        if not destructive:
            return True
        return bool(msg.user_id) and msg.user_id == msg.chat_id  # the private chat's owner

    async def handle(self, update: Any) -> list[Action]:
        incoming = update if isinstance(update, Incoming) else Incoming.from_update(update)
        if incoming is None or not self.authorized(incoming.chat_id):
            if incoming is not None:
                log.warning("ignored an update from unauthorised chat %s", incoming.chat_id)
            return []
        if incoming.callback_id:
            return await self._callback(incoming)
        parsed = parse_command(incoming.text)
        if parsed is None:
            return []
        if incoming.date is not None:
            age = (self.now() - incoming.date).total_seconds()
            if age > MAX_COMMAND_AGE_S:
                return [Reply(incoming.chat_id, f"Ignored /{parsed[0]}: sent {age:.0f}s ago "
                              "while I was unreachable. Send it again if still wanted.")]
        command, args = parsed
        if not self.user_may(incoming, command in DESTRUCTIVE):
            log.warning("refused /%s from user %s in chat %s", command,
                        incoming.user_id or "?", incoming.chat_id)
            return [Reply(incoming.chat_id, f"/{command} refused: Telegram user "
                          f"{incoming.user_id or '(unknown)'} is not in "
                          "telegram.allowed_user_ids.")]
        try:
            return await self._command(incoming, command, args)
        except Exception as exc:
            log.exception("command /%s failed", command)
            return [Reply(incoming.chat_id, f"/{command} failed: {_describe(exc)}")]

    async def _command(self, msg: Incoming, command: str, args: list[str]) -> list[Action]:
        chat = msg.chat_id
        if command in ("help", "start"):
            return [Reply(chat, HELP)]
        if command == "status":
            status = await self.run_blocking(self.control.risk_status)
            return [Reply(chat, format_status(status))]
        if command == "positions":
            return [Reply(chat, format_positions(await self.run_blocking(
                self.control.positions)))]
        if command == "pnl":
            status = await self.run_blocking(self.control.risk_status)
            trades = await self.run_blocking(self.control.trades, 500)
            positions = await self.run_blocking(self.control.positions)
            today = self.now().date()
            summary = pnl_summary(trades, positions, today, status.get("daily_pnl"))
            return [Reply(chat, format_pnl(summary, today))]
        if command in DESTRUCTIVE:
            return await self._ask(msg, command, args)
        return [Reply(chat, f"Unknown command /{command}.\n\n{HELP}")]

    async def _ask(self, msg: Incoming, command: str, args: list[str]) -> list[Action]:
        arg = ""
        if command == "close":
            arg = (args[0] if args else "").upper()
            if not SYMBOL_RE.match(arg):
                return [Reply(msg.chat_id, "Usage: /close SYMBOL (e.g. /close BTCUSDT)")]
            question = f"Close the {arg} position at market?"
        elif command == "closeall":
            question = "Close EVERY open position at market?"
        else:
            question = {"pause": "Pause trading (REDUCING: closes only, no new entries)?",
                        "halt": "HALT trading (nothing new is traded)?",
                        "resume": "Resume trading (ACTIVE)?"}[command]
        token = secrets.token_urlsafe(9)
        expires = self.now() + dtm.timedelta(seconds=self.confirm_ttl_s)
        payload = {"command": command, "arg": arg, "chat": msg.chat_id, "user": msg.user,
                   "user_id": msg.user_id, "expires": expires.isoformat()}
        payload["mac"] = seal(self.key, token, payload)
        await self.confirmations.put(token, payload, self.confirm_ttl_s)
        return [Reply(msg.chat_id, f"{question}\nConfirm within {self.confirm_ttl_s}s.",
                      (("✅ Confirm", f"ok:{token}"), ("✖ Cancel", f"no:{token}")))]

    async def _callback(self, msg: Incoming) -> list[Action]:
        verb, _, token = msg.callback_data.partition(":")
        if verb not in ("ok", "no") or not token:
            return [AnswerCallback(msg.callback_id, "Unknown button")]
        pending = await self.confirmations.take(token)
        if pending is not None and not hmac.compare_digest(
                pending.get("mac", ""), seal(self.key, token, pending)):
            log.error("confirmation %s failed its HMAC check: altered in Redis?", token)
            pending = None
        if pending is None or pending.get("chat") != msg.chat_id:
            return [AnswerCallback(msg.callback_id, "Expired or already used"),
                    Reply(msg.chat_id, "That confirmation expired or was already used; "
                          "send the command again.")]
        if pending.get("user_id") != msg.user_id:
            await self._put_back(token, pending)  # the asker may still press it
            return [AnswerCallback(msg.callback_id, "Only the user who asked can confirm")]
        command, arg = pending["command"], pending.get("arg", "")
        label = f"/{command}" + (f" {arg}" if arg else "")
        if verb == "no":
            return [AnswerCallback(msg.callback_id, "Cancelled"),
                    Reply(msg.chat_id, f"{label} cancelled.")]
        answer = AnswerCallback(msg.callback_id, f"{label}: working…")
        try:
            text = await self._execute(command, arg, msg.user)
        except Exception as exc:
            log.exception("confirmed %s failed", label)
            text = f"{label} failed: {_describe(exc)}"
        return [answer, Reply(msg.chat_id, text)]

    async def _put_back(self, token: str, pending: dict[str, str]) -> None:
        try:
            left = (dtm.datetime.fromisoformat(pending["expires"]) - self.now()).total_seconds()
        except (KeyError, ValueError):
            return
        if left >= 1:
            await self.confirmations.put(token, pending, int(left))

    async def _execute(self, command: str, arg: str, user: str) -> str:
        if command in STATE_OF:
            result = await self.run_blocking(self.control.set_state, STATE_OF[command],
                                             f"telegram /{command} by {user}")
            return (f"Trading state {result.get('previous', '?')} -> "
                    f"{result.get('state', STATE_OF[command])}")
        if command == "close":
            result = await self.run_blocking(self.control.close, arg)
            return _close_line(arg, result)
        results = await self.run_blocking(self.control.close_all)
        if not results:
            return "No open positions to close."
        return "\n".join(_close_line(str(r.get("symbol", "?")), r) for r in results)


def _close_line(symbol: str, result: dict[str, Any]) -> str:
    status = result.get("status", "?")
    extra = ", ".join(f"{k} {result[k]}" for k in ("exit_price", "realized_pnl", "reason")
                      if result.get(k) not in (None, ""))
    return f"Close {symbol}: {status}" + (f" ({extra})" if extra else "")
