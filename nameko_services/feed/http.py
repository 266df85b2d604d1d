"""Health, readiness and metrics on ``services.feed_port``, in the feed's own loop."""

from __future__ import annotations

import asyncio
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from shared.names import FEED
from shared.openapi import document

from .metrics import FeedMetrics


class FeedView(Protocol):
    metrics: FeedMetrics

    def readiness(self) -> dict[str, bool]: ...


class HealthServer:
    def __init__(self, feed: FeedView, host: str, port: int) -> None:
        self.feed = feed
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/ready", self.ready)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/openapi.json", self.openapi)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])  # the real one when port 0 was asked

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "service": "feed"})

    async def ready(self, _request: web.Request) -> web.Response:
        # Redis' ping is blocking I/O: off the loop
        checks = await asyncio.get_running_loop().run_in_executor(None, self.feed.readiness)
        ok = all(checks.values())
        return web.json_response({"ready": ok, "checks": checks,
                                  "failing": [k for k, v in checks.items() if not v]},
                                 status=200 if ok else 503)

    async def metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.feed.metrics.render(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(self, _request: web.Request) -> web.Response:
        return web.json_response(document(FEED))
