"""One WebSocket connection: its route, subscriptions and ordered, delayed sender.

Binance's live-subscription protocol (SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS,
SET_PROPERTY, GET_PROPERTY) with its documented answers and errors. Everything runs on
the server's event loop; messages leave in the order they were queued, each after the
simulated network latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any, Literal

from aiohttp import web

from .metrics import Latency, Metrics
from .streams import Stream, parse_stream

log = logging.getLogger(__name__)
ConnRoute = Literal["public", "market", "private", "legacy"]
MAX_STREAMS = 1024  # Binance's per-connection limit
MAX_BACKLOG = 10_000  # queued messages; a client this far behind is disconnected
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")


def _error(code: int, msg: str, request_id: Any) -> dict[str, Any]:
    return {"error": {"code": code, "msg": msg}, "id": request_id}


def _invalid(msg: str, request_id: Any = None) -> dict[str, Any]:
    return _error(2, f"Invalid request: {msg}", request_id)


class Connection:
    def __init__(self, ws: web.WebSocketResponse, route: ConnRoute, combined: bool,
                 latency: Latency, metrics: Metrics,
                 key_is_active: Callable[[str], bool]) -> None:
        self.ws = ws
        self.route = route
        self.combined = combined
        self.latency = latency
        self.metrics = metrics
        self.key_is_active = key_is_active
        self.subs: dict[str, Stream] = {}
        self.keys: list[str] = []  # listen keys (private route only)
        self.events: frozenset[str] | None = None  # ``events=`` filter of a private socket
        self._queue: asyncio.Queue[tuple[float, str, str] | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._dropping = False
        self._sender = self._loop.create_task(self._send_loop())

    # --- delivery -------------------------------------------------------------------
    def hears(self, stream: Stream) -> bool:
        # A valid stream on the wrong route is accepted and silent, as on Binance; legacy
        # unrouted URLs get the public streams only.
        want = "public" if self.route == "legacy" else self.route
        return stream.route == want

    def send(self, payload: Any, event_type: str, stream: str | None = None) -> None:
        if self._queue.qsize() >= MAX_BACKLOG:
            # A reader that stopped reading would otherwise grow this queue without bound;
            # Binance drops slow consumers too. The client reconnects on its next watch.
            if not self._dropping:
                self._dropping = True
                log.warning("websocket client %d messages behind: disconnecting", MAX_BACKLOG)
                self._loop.create_task(self.close(1008))
            return
        if self.combined and stream is not None:
            payload = {"stream": stream, "data": payload}
        due = self._loop.time() + self.latency.delay_s()
        self._queue.put_nowait((due, json.dumps(payload, separators=(",", ":")), event_type))

    async def _send_loop(self) -> None:
        last_due = 0.0
        while True:
            item = await self._queue.get()
            if item is None:
                return
            due, text, event_type = item
            due = max(due, last_due)  # jitter must not reorder a stream
            last_due = due
            wait = due - self._loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.ws.closed:
                continue
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):  # peer gone: the reader ends the socket
                continue
            self.metrics.ws_events.labels(event_type).inc()

    async def close(self, code: int) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.close(code=code)

    async def finish(self) -> None:
        self._queue.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender

    # --- the live-subscription protocol ---------------------------------------------
    def handle_text(self, text: str) -> None:
        try:
            request = json.loads(text)
        except json.JSONDecodeError as exc:
            what = exc.msg.replace("Expecting", "expected")
            self.send(_error(3, f"Invalid JSON: {what} at line {exc.lineno} column {exc.colno}",
                             None), "response")
            return
        self.send(self.answer(request), "response")

    def answer(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict):
            return _invalid("expected a JSON object")
        rid = request.get("id")
        if "method" not in request:
            return _invalid("missing field `method` at line 1 column "
                            f"{len(json.dumps(request))}", rid)
        if not isinstance(rid, int) or isinstance(rid, bool) or rid < 0:
            return _invalid("request ID must be an unsigned integer", rid)
        method = request["method"]
        if method not in METHODS:
            expected = ", ".join(f"`{m}`" for m in METHODS)
            return _invalid(f"unknown variant `{method}`, expected one of {expected}", rid)
        params = request.get("params", [])
        if not isinstance(params, list):
            return _invalid("invalid type: expected a sequence", rid)
        if method == "SUBSCRIBE":
            return self._subscribe(params, rid)
        if method == "UNSUBSCRIBE":
            for name in params:
                if isinstance(name, str):
                    self.subs.pop(name, None)
                    if name in self.keys:
                        self.keys.remove(name)
            return {"result": None, "id": rid}
        if method == "LIST_SUBSCRIPTIONS":
            return {"result": [*self.keys, *self.subs], "id": rid}
        return self._property(method, params, rid)

    def _property(self, method: str, params: list[Any], rid: int) -> dict[str, Any]:
        if method == "SET_PROPERTY":
            if len(params) != 2 or params[0] != "combined":
                return _invalid("unknown property", rid)
            if not isinstance(params[1], bool):
                return _invalid("invalid value", rid)
            self.combined = params[1]
            return {"result": None, "id": rid}
        if params != ["combined"]:  # GET_PROPERTY
            return _invalid("unknown property", rid)
        return {"result": self.combined, "id": rid}

    def _subscribe(self, params: list[Any], rid: int) -> dict[str, Any]:
        streams: list[Stream] = []
        keys: list[str] = []
        for name in params:
            if not isinstance(name, str):
                return _invalid("invalid stream", rid)
            if self.route == "private":
                # The official SDK subscribes its listenKey on /private/stream.
                if not self.key_is_active(name):
                    return _invalid("invalid stream", rid)
                keys.append(name)
                continue
            stream = parse_stream(name)
            if stream is None:
                return _invalid("invalid stream", rid)
            streams.append(stream)
        if len(self.subs) + len(streams) > MAX_STREAMS:
            return _invalid("too many parameters", rid)
        for stream in streams:
            self.subs[stream.name] = stream
        self.keys.extend(k for k in keys if k not in self.keys)
        return {"result": None, "id": rid}
