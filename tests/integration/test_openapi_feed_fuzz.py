"""The fuzz harness against a real server: the feed's HTTP app on port 0 (no 5xx, schema kept)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from shared import names
from shared.openapi import document
from tests.support.fuzz import fuzz


class _Metrics:
    def render(self) -> bytes:
        return b"# HELP x y\n"


class _Feed:
    metrics = _Metrics()

    def __init__(self) -> None:
        self.ready = False

    def readiness(self) -> dict[str, bool]:
        return {"market": self.ready, "account": True}


@pytest.fixture()
def feed_url() -> Iterator[str]:
    from nameko_services.feed.http import HealthServer

    loop = asyncio.new_event_loop()
    server = HealthServer(_Feed(), "127.0.0.1", 0)  # type: ignore[arg-type]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_feed_answers_as_its_document_says(feed_url: str) -> None:
    pytest.importorskip("schemathesis")
    assert fuzz(feed_url, document(names.FEED), api_key="unused", examples=10) == []


def test_the_harness_reports_a_document_the_server_breaks(feed_url: str) -> None:
    pytest.importorskip("schemathesis")
    lying = document(names.FEED)
    del lying["paths"]["/ready"]["get"]["responses"]["503"]  # the not-ready answer

    failures = fuzz(feed_url, lying, api_key="unused", examples=5)

    assert any("/ready" in f for f in failures)
