"""A Nameko service with the real readiness probe, for tests/integration/test_readiness.py.

``nameko run --config <file> tests.support.ready_probe`` consumes ``PROBE_QUEUE`` (env) with
:func:`shared.consumer.durable_consume`, answers RPC (``ready_probe``) and serves ``/ready``
with :class:`shared.health.ReadinessProbe` checking the broker, Redis and the feed's market
state - what brain checks.
"""

from __future__ import annotations

from typing import Any

from nameko.rpc import rpc
from nameko.web.handlers import http
from werkzeug.wrappers import Request

from shared.consumer import durable_consume
from shared.health import ReadinessChecks, ReadinessProbe
from shared.web import api
from tests.support.durable_probe import probe_queue


class ReadyProbe:
    name = "ready_probe"

    readiness: ReadinessChecks = ReadinessProbe(market=True)

    @durable_consume(probe_queue())
    def handle(self, body: dict[str, Any]) -> None:
        return None

    @rpc
    def ping(self) -> str:
        return "pong"

    @http("GET", "/ready")
    @api
    def ready(self, request: Request) -> tuple[int, Any]:
        result = self.readiness.run()
        return result.status, result.wire()
