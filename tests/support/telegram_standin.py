"""A local stand-in for the Telegram Bot API, for tests and offline demos.

A real threaded HTTP server on a free port answering ``/bot<token>/<method>`` with
Telegram's JSON shapes (``{"ok": true, "result": ...}``) for ``getMe``, ``sendMessage``,
``getUpdates`` and ``answerCallbackQuery``. It records every call and every sent message,
can queue updates for ``getUpdates`` (long polling honoured), and can be told to fail the
next N calls with HTTP 500 or 429 + ``retry_after``.

    with TelegramStandin(token="123:abc") as tg:
        bot = telegram.Bot("123:abc", base_url=tg.base_url)
        ...
        tg.wait_for_messages(1)
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

BOT_ID = 777000123


@dataclass(frozen=True)
class SentMessage:
    chat_id: int | str
    text: str
    message_id: int
    params: dict[str, Any]
    at: float


@dataclass(frozen=True)
class Call:
    method: str
    params: dict[str, Any]
    status: int
    at: float


@dataclass
class _Failure:
    remaining: int
    status: int
    retry_after: int | None
    method: str | None


@dataclass
class _State:
    calls: list[Call] = field(default_factory=list)
    sent: list[SentMessage] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    failures: list[_Failure] = field(default_factory=list)
    blocked: dict[str, tuple[int, str]] = field(default_factory=dict)  # chat -> refusal
    next_message_id: int = 1
    # time-based, so a bot that confirmed ids of an earlier stand-in (its offset is kept
    # in Redis) still receives the updates of a new one, like real, monotonic update ids
    next_update_id: int = field(default_factory=lambda: int(time.time() * 1000))


def _decode_value(value: str) -> Any:
    """Form fields hold JSON for non-string values (reply_markup, numbers, bools)."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def _chat(chat_id: Any) -> dict[str, Any]:
    try:
        numeric = int(chat_id)
    except (TypeError, ValueError):
        return {"id": -1000000000000 - (abs(hash(chat_id)) % 10**9), "type": "channel",
                "username": str(chat_id).lstrip("@"), "title": str(chat_id)}
    if numeric < 0:
        return {"id": numeric, "type": "supergroup", "title": f"group {numeric}"}
    return {"id": numeric, "type": "private", "first_name": "Trader"}


class TelegramStandin:
    """The stand-in server. Thread-safe; start with ``start()`` or a ``with`` block."""

    def __init__(self, token: str = "123456:TEST-TOKEN", host: str = "127.0.0.1",
                 port: int = 0, username: str = "phoenix95_test_bot") -> None:
        self.token = token
        self.username = username
        self._state = _State()
        self._cond = threading.Condition()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                standin._handle(self)

            def do_POST(self) -> None:
                standin._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """What to pass as ``telegram.Bot(..., base_url=...)`` (the token is appended)."""
        return f"http://127.0.0.1:{self.port}/bot"

    def start(self) -> TelegramStandin:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            name="telegram-standin", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread = None

    def __enter__(self) -> TelegramStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test controls

    def fail_next(self, count: int, status: int = 500, retry_after: int | None = None,
                  method: str | None = "sendMessage") -> None:
        """Fail the next ``count`` calls (of ``method``; None = any method)."""
        if status == 429 and retry_after is None:
            retry_after = 1
        with self._cond:
            self._state.failures.append(_Failure(count, status, retry_after, method))

    def block_chat(self, chat_id: int | str, status: int = 403,
                   description: str = "Forbidden: bot was blocked by the user") -> None:
        """Refuse every sendMessage to ``chat_id`` for good (403 blocked, 400 chat not found)."""
        with self._cond:
            self._state.blocked[str(chat_id)] = (status, description)

    def queue_update(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue a raw Update for getUpdates (``update_id`` assigned if missing)."""
        with self._cond:
            update = dict(update)
            if "update_id" not in update:
                update["update_id"] = self._state.next_update_id
            self._state.next_update_id = max(self._state.next_update_id,
                                             int(update["update_id"]) + 1)
            self._state.updates.append(update)
            self._cond.notify_all()
        return update

    def queue_message(self, text: str, chat_id: int = 42, user_id: int = 42) -> dict[str, Any]:
        """Queue an incoming text message (``/status`` etc.) from a user."""
        with self._cond:
            message_id = self._state.next_message_id
            self._state.next_message_id += 1
        message: dict[str, Any] = {
            "message_id": message_id, "date": int(time.time()), "chat": _chat(chat_id),
            "from": {"id": user_id, "is_bot": False, "first_name": "Trader"}, "text": text,
        }
        if text.startswith("/"):
            command = text.split()[0]
            message["entities"] = [{"type": "bot_command", "offset": 0,
                                    "length": len(command)}]
        return self.queue_update({"message": message})

    def queue_callback_query(self, data: str, chat_id: int = 42,
                             user_id: int = 42) -> dict[str, Any]:
        """Queue an inline-button press carrying ``data``."""
        with self._cond:
            message_id = self._state.next_message_id
            self._state.next_message_id += 1
            query_id = f"cq{self._state.next_update_id}"
        message = {"message_id": message_id, "date": int(time.time()), "chat": _chat(chat_id),
                   "from": self._me(), "text": "(buttons)"}
        return self.queue_update({"callback_query": {
            "id": query_id, "from": {"id": user_id, "is_bot": False, "first_name": "Trader"},
            "chat_instance": str(chat_id), "data": data, "message": message,
        }})

    @property
    def sent(self) -> list[SentMessage]:
        with self._cond:
            return list(self._state.sent)

    @property
    def calls(self) -> list[Call]:
        with self._cond:
            return list(self._state.calls)

    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[SentMessage]:
        """Block until at least ``count`` messages were sent; return them (maybe fewer)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._state.sent) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return list(self._state.sent)

    def reset(self) -> None:
        with self._cond:
            self._state = _State()

    # ------------------------------------------------------------------ HTTP

    def _me(self) -> dict[str, Any]:
        return {"id": BOT_ID, "is_bot": True, "first_name": "Phoenix 95",
                "username": self.username, "can_join_groups": True,
                "can_read_all_group_messages": False, "supports_inline_queries": False}

    @staticmethod
    def _params(handler: BaseHTTPRequestHandler) -> dict[str, Any]:
        params: dict[str, Any] = {
            k: _decode_value(v) for k, v in parse_qsl(urlsplit(handler.path).query)
        }
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        ctype = (handler.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if body and ctype == "application/json":
            loaded = json.loads(body)
            if isinstance(loaded, dict):
                params.update(loaded)
        elif body and ctype == "application/x-www-form-urlencoded":
            params.update({k: _decode_value(v) for k, v in parse_qsl(body.decode())})
        return params

    def _reply(self, handler: BaseHTTPRequestHandler, status: int,
               payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        # a long poll the bot gave up on (it stopped) has nobody left to answer
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            handler.wfile.write(body)

    def _take_failure(self, method: str) -> _Failure | None:
        for failure in self._state.failures:
            if failure.remaining > 0 and failure.method in (None, method):
                failure.remaining -= 1
                return failure
        self._state.failures = [f for f in self._state.failures if f.remaining > 0]
        return None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path).path.strip("/").split("/")
        try:
            params = self._params(handler)
        except ValueError:
            self._reply(handler, 400, {"ok": False, "error_code": 400,
                                       "description": "Bad Request: can't parse body"})
            return
        if len(parts) != 2 or not parts[0].startswith("bot"):
            self._reply(handler, 404, {"ok": False, "error_code": 404,
                                       "description": "Not Found"})
            return
        token, method = parts[0][3:], parts[1]
        if token != self.token:
            self._record(method, params, 401)
            self._reply(handler, 401, {"ok": False, "error_code": 401,
                                       "description": "Unauthorized"})
            return
        with self._cond:
            refusal = (self._state.blocked.get(str(params.get("chat_id")))
                       if method == "sendMessage" else None)
            failure = None if refusal else self._take_failure(method)
        if refusal is not None:
            self._record(method, params, refusal[0])
            self._reply(handler, refusal[0], {"ok": False, "error_code": refusal[0],
                                              "description": refusal[1]})
            return
        if failure is not None:
            self._record(method, params, failure.status)
            if failure.status == 429:
                self._reply(handler, 429, {
                    "ok": False, "error_code": 429,
                    "description": f"Too Many Requests: retry after {failure.retry_after}",
                    "parameters": {"retry_after": failure.retry_after},
                })
            else:
                self._reply(handler, failure.status, {
                    "ok": False, "error_code": failure.status,
                    "description": "Internal Server Error",
                })
            return
        status, payload = self._dispatch(method, params)
        self._record(method, params, status)
        self._reply(handler, status, payload)

    def _record(self, method: str, params: dict[str, Any], status: int) -> None:
        with self._cond:
            self._state.calls.append(Call(method, params, status, time.time()))

    def _dispatch(self, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name = method.lower()
        if name == "getme":
            return 200, {"ok": True, "result": self._me()}
        if name == "sendmessage":
            return self._send_message(params)
        if name == "getupdates":
            return 200, {"ok": True, "result": self._get_updates(params)}
        if name == "answercallbackquery":
            if not params.get("callback_query_id"):
                return 400, {"ok": False, "error_code": 400,
                             "description": "Bad Request: query id is empty"}
            return 200, {"ok": True, "result": True}
        if name in ("deletewebhook", "setmycommands", "close", "logout"):
            return 200, {"ok": True, "result": True}
        return 404, {"ok": False, "error_code": 404, "description": "Not Found: method not found"}

    def _send_message(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        chat_id, text = params.get("chat_id"), params.get("text")
        if chat_id in (None, ""):
            return 400, {"ok": False, "error_code": 400,
                         "description": "Bad Request: chat_id is empty"}
        if not text:
            return 400, {"ok": False, "error_code": 400,
                         "description": "Bad Request: message text is empty"}
        text = str(text)
        if len(text) > 4096:
            return 400, {"ok": False, "error_code": 400,
                         "description": "Bad Request: message is too long"}
        with self._cond:
            message_id = self._state.next_message_id
            self._state.next_message_id += 1
            self._state.sent.append(SentMessage(str(chat_id), text, message_id, dict(params),
                                                time.time()))
            self._cond.notify_all()
        result: dict[str, Any] = {
            "message_id": message_id, "date": int(time.time()), "chat": _chat(chat_id),
            "from": self._me(), "text": text,
        }
        return 200, {"ok": True, "result": result}

    def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        timeout = min(float(params.get("timeout") or 0), 30.0)
        deadline = time.monotonic() + timeout
        with self._cond:
            if offset:  # confirms (and forgets) everything below offset
                self._state.updates = [u for u in self._state.updates
                                       if u["update_id"] >= offset]
            while not self._state.updates and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            return [dict(u) for u in self._state.updates[:limit]]
