"""Take one dead letter from a queue's ``.dlq`` (the others are put back untouched)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kombu import Connection

from shared.names import kombu_dead_letter_queue


def take_dead_letter(conn: Connection, queue: str, matches: Callable[[Any], bool],
                     timeout: float = 30.0) -> Any:
    """The first message of ``queue``.dlq whose payload ``matches``, acked; None when none
    arrives within ``timeout`` s. Every other dead letter read is requeued at the end."""
    found, held = None, []
    deadline = time.monotonic() + timeout
    dlq = kombu_dead_letter_queue(queue)(conn.channel())
    dlq.declare()
    try:
        while found is None and time.monotonic() < deadline:
            msg = dlq.get(no_ack=False)
            if msg is None:
                time.sleep(0.2)
            elif matches(msg.payload):
                found = msg
                msg.ack()
            else:
                held.append(msg)
    finally:
        for msg in held:
            msg.requeue()
    return found
