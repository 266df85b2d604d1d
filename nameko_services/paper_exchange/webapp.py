"""One aiohttp server for REST and WebSocket on the same port, as Binance's host does.

REST requests are handed unchanged to the WSGI :class:`~.api.PaperApi` in a thread pool
(the engine is thread-based), so the REST contract is the one its tests pin. WebSocket
upgrades on Binance's stream paths go to the :class:`~.hub.Hub`. Latency is an
``asyncio.sleep`` before each answer: a slow answer never holds up another request.
"""

from __future__ import annotations

import asyncio
import io
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from aiohttp import WSMsgType, web

from .api import PaperApi
from .faults import Fault
from .hub import Hub
from .metrics import Latency, Metrics
from .streams import parse_stream
from .wsconn import ConnRoute

WSGI_WORKERS = 32


@dataclass(frozen=True)
class WsTarget:
    """Where a WebSocket path leads: route, framing, and streams or keys named in the URL."""

    label: str  # metrics path label, e.g. /market/ws
    route: ConnRoute
    combined: bool
    names: list[str] = field(default_factory=list)
    events: frozenset[str] | None = None


def ws_target(path: str, query: str) -> WsTarget | None:
    """Binance's stream URLs: /ws/<s>, /stream?streams=, /{public,market}/{ws,stream},
    /private/ws?listenKey=, /private/ws/<key>, /private/stream?listenKey=."""
    parts = [p for p in path.split("/") if p]
    prefix: str | None = None
    if parts and parts[0] in ("public", "market", "private"):
        prefix, parts = parts[0], parts[1:]
    if not parts or parts[0] not in ("ws", "stream"):
        return None
    kind, rest = parts[0], parts[1:]
    args = parse_qs(query)
    route: ConnRoute = prefix if prefix is not None else "legacy"  # type: ignore[assignment]
    label = f"/{prefix}/{kind}" if prefix else f"/{kind}"
    if route == "private":
        keys = [*rest, *args.get("listenKey", [])]
        events = args.get("events")
        return WsTarget(label, route, kind == "stream", keys,
                        frozenset("/".join(events).split("/")) if events else None)
    names = [*rest] if kind == "ws" else []
    for value in args.get("streams", []):
        names.extend(n for n in value.split("/") if n)
    return WsTarget(label, route, kind == "stream", names)


def wsgi_environ(request: web.Request, body: bytes) -> dict[str, Any]:
    host, port = (request.transport.get_extra_info("sockname") or ("127.0.0.1", 0))[:2] \
        if request.transport else ("127.0.0.1", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method, "SCRIPT_NAME": "", "PATH_INFO": request.path,
        # the raw query: the HMAC is checked over the bytes the client signed
        "QUERY_STRING": request.rel_url.raw_query_string, "SERVER_NAME": str(host),
        "SERVER_PORT": str(port), "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": request.remote or "", "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in request.headers.items():
        key = name.upper().replace("-", "_")
        if key == "CONTENT_TYPE":
            environ[key] = value
        elif key != "CONTENT_LENGTH":
            environ[f"HTTP_{key}"] = (f"{environ[f'HTTP_{key}']},{value}"
                                      if f"HTTP_{key}" in environ else value)
    return environ


def call_wsgi(app: PaperApi, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]],
                                                                bytes]:
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None
                       ) -> Any:
        captured["status"], captured["headers"] = status, headers
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return int(captured["status"].split()[0]), captured["headers"], body


class WebServer:
    def __init__(self, api: PaperApi, hub: Hub, metrics: Metrics, latency: Latency,
                 timeout_hold_s: float = 11.0) -> None:
        self.api = api
        self.timeout_hold_s = timeout_hold_s
        self.hub = hub
        self.metrics = metrics
        self.latency = latency
        self.pool = ThreadPoolExecutor(WSGI_WORKERS, thread_name_prefix="paper-rest")
        self.app = web.Application(client_max_size=1 << 20)
        self.app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        self._paths = api.route_paths() | {"/metrics"}

    async def start(self, sock: Any) -> None:
        self.hub.start()
        await self.runner.setup()
        await web.SockSite(self.runner, sock, shutdown_timeout=1.0).start()

    async def stop(self) -> None:
        await self.hub.stop()
        await self.runner.cleanup()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _label(self, path: str, target: WsTarget | None) -> str:
        if target is not None:
            return target.label
        path = path.rstrip("/") or "/"
        return path if path in self._paths else "other"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        target = ws_target(request.path, request.rel_url.raw_query_string)
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        self.metrics.requests.labels(request.method,
                                     self._label(request.path, target if upgrade else None)
                                     ).inc()
        if request.path == "/metrics":
            body, content_type = self.metrics.render()
            return web.Response(body=body, headers={"Content-Type": content_type})
        if target is not None and upgrade:
            return await self.serve_ws(request, target)
        fault = self.api.faults.draw(request.path)
        if fault is not None and not fault.processed:
            return await self._fail(request, fault)
        body = await request.read()
        loop = asyncio.get_running_loop()
        status, headers, data = await loop.run_in_executor(
            self.pool, call_wsgi, self.api, wsgi_environ(request, body))
        if fault is not None:
            return await self._fail(request, fault)
        await self._network_delay()
        response = web.Response(body=data, status=status)
        for name, value in headers:
            if name.lower() == "content-type":
                response.headers["Content-Type"] = value
            elif name.lower() != "content-length":
                response.headers.add(name, value)
        return response

    async def _fail(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        if not fault.is_timeout:
            await self._network_delay()
            status, body = fault.answer()
            if isinstance(body, str):
                return web.Response(text=body, status=status)
            return web.json_response(body, status=status)
        # Held past the client's timeout, then the connection is cut: the client gives up
        # first and never learns whether the request was processed.
        await asyncio.sleep(self.timeout_hold_s)
        if request.transport is not None:
            request.transport.close()
        raise asyncio.CancelledError

    async def _network_delay(self) -> None:
        delay = self.latency.delay_s()
        if delay > 0:
            await asyncio.sleep(delay)

    async def serve_ws(self, request: web.Request, target: WsTarget) -> web.StreamResponse:
        if target.route == "private":
            if not target.names and not target.combined:
                return web.json_response({"code": -1102, "msg": "Mandatory parameter "
                                          "'listenKey' was not sent."}, status=400)
            if any(not self.hub.keys.is_active(k) for k in target.names):
                return web.json_response({"code": -1125,
                                          "msg": "This listenKey does not exist."}, status=400)
        await self._network_delay()  # the handshake is a round trip too
        ws = web.WebSocketResponse(autoping=True, heartbeat=None, max_msg_size=1 << 20)
        await ws.prepare(request)
        conn = self.hub.new_connection(ws, target.route, target.combined)
        if target.route == "private":
            conn.keys.extend(dict.fromkeys(target.names))
            conn.events = target.events
        else:
            for name in target.names:  # unknown segments (ccxt's "0") are ignored
                stream = parse_stream(name)
                if stream is not None:
                    conn.subs[stream.name] = stream
        self.hub.add(conn)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    conn.handle_text(msg.data)
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.hub.remove(conn)
            await conn.finish()
        return ws
