"""``python -m nameko_services.feed``: run the market and account feed until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

from shared.kafka_producer import recovering_producer
from shared.redis_conn import redis_client
from shared.settings import Settings, settings_or_exit

from .engine import Feed

log = logging.getLogger("phoenix95.feed")


def make_producer(settings: Settings) -> Any:
    """A Kafka producer that reports an outage once, not on every reconnect attempt, and
    is replaced when it can no longer deliver (shared/kafka_producer.py)."""
    reported: list[str] = []

    def on_error(err: Any) -> None:
        if not reported:
            reported.append(str(err))
            log.error("kafka unavailable (records to Redis continue): %s", err)

    # librdkafka's own log repeats every failed connect to stderr: error_cb reports it once
    return recovering_producer(settings, **{"client.id": "phoenix95-feed",
                                            "error_cb": on_error, "log_level": 2})


async def serve(settings: Settings) -> None:
    client = redis_client(settings.redis_streams, socket_timeout=2.0,
                          socket_connect_timeout=2.0, health_check_interval=30)
    feed = Feed(settings, client, producer=make_producer(settings))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, feed.stop)
    await feed.run()


def main() -> int:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_or_exit()
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
