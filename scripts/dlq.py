"""Inspect, replay and drop dead letters: ``python scripts/dlq.py`` (or ``scripts/dlq``).

    scripts/dlq list [QUEUE ...]          every dead letter: id, age, service, reason
    scripts/dlq replay QUEUE [--id ID]    move back to QUEUE (all, or the one with ID)
    scripts/dlq drop QUEUE (--id ID | --all)

QUEUE is a work queue (``trade_execution``) or its dead-letter queue
(``trade_execution.dlq``). A replayed message starts over with zero retries; it is
published to the work queue with publisher confirms before it is removed from the
dead-letter queue, so a crash in between leaves a duplicate, never a loss (every consumer
is idempotent). Listing takes nothing away: the messages are put back.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts._bootstrap import ensure_venv

if __name__ == "__main__":
    ensure_venv(__file__)

import argparse
import hashlib
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from amqp.exceptions import ChannelError
from kombu import Connection

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")  # nameko's import
from shared.consumer import (  # noqa: E402
    DEAD_AT_HEADER,
    ERROR_HEADER,
    QUEUE_HEADER,
    RETRY_HEADER,
    SERVICE_HEADER,
)
from shared.names import DLQ_SUFFIX, QUEUE_BINDINGS, kombu_dead_letter_queue  # noqa: E402

REPLAYS_HEADER = "x-phoenix-replays"
_DEAD_LETTER_HEADERS = (ERROR_HEADER, SERVICE_HEADER, QUEUE_HEADER, DEAD_AT_HEADER)


@dataclass
class DeadLetter:
    id: str
    queue: str
    body: bytes
    reason: str
    service: str
    age_s: float  # -1 when unknown
    retries: int
    message: Any = field(repr=False, default=None)


def work_queue(name: str) -> str:
    return name.removesuffix(DLQ_SUFFIX)


def _dead_letter(queue: str, msg: Any, now: float) -> DeadLetter:
    headers = dict(msg.headers or {})
    body = msg.body if isinstance(msg.body, bytes) else str(msg.body).encode()
    dead_at = headers.get(DEAD_AT_HEADER)
    ident = msg.properties.get("message_id") or hashlib.sha1(
        body + str(dead_at).encode(), usedforsecurity=False).hexdigest()[:12]
    return DeadLetter(
        id=str(ident), queue=queue, body=body,
        reason=str(headers.get(ERROR_HEADER) or "(no reason recorded)"),
        service=str(headers.get(SERVICE_HEADER) or "?"),
        age_s=now - float(dead_at) if dead_at is not None else -1.0,
        retries=int(headers.get(RETRY_HEADER) or 0), message=msg)


def _exists(conn: Connection, queue: str) -> bool:
    """Passive declare on a channel of its own (a missing queue closes the channel)."""
    channel = conn.channel()
    try:
        channel.queue_declare(queue, passive=True)
        return True
    except ChannelError:
        return False
    finally:
        with suppress(Exception):
            channel.close()


@contextmanager
def _taken(conn: Connection, queue: str) -> Iterator[list[DeadLetter]]:
    """Every message of ``queue``'s DLQ, unacked; whatever is not acked is put back."""
    channel = conn.channel()
    try:
        bound = kombu_dead_letter_queue(queue)(channel)
        bound.declare()
        letters: list[DeadLetter] = []
        now = time.time()
        while (msg := bound.get(no_ack=False)) is not None:
            letters.append(_dead_letter(queue, msg, now))
        try:
            yield letters
        finally:
            for letter in letters:
                if not letter.message.acknowledged:
                    letter.message.requeue()
    finally:
        channel.close()


def list_dead_letters(amqp_uri: str, queues: Sequence[str] = ()) -> dict[str, list[DeadLetter]]:
    """Dead letters per work queue (put back untouched); a queue with no DLQ is left out."""
    out: dict[str, list[DeadLetter]] = {}
    with Connection(amqp_uri) as conn:
        for queue in [work_queue(q) for q in queues] or list(QUEUE_BINDINGS):
            if not _exists(conn, queue + DLQ_SUFFIX):
                continue
            with _taken(conn, queue) as letters:
                out[queue] = list(letters)
    return out


def replay(amqp_uri: str, queue: str, message_id: str | None) -> int:
    """Publish the selected dead letters back to the work queue (confirmed), then ack."""
    queue = work_queue(queue)
    moved = 0
    with Connection(amqp_uri, transport_options={"confirm_publish": True}) as conn:
        if not _exists(conn, queue) or not _exists(conn, queue + DLQ_SUFFIX):
            raise SystemExit(f"dlq: no queue {queue} (or {queue}{DLQ_SUFFIX}) on this broker")
        producer = conn.Producer()
        with _taken(conn, queue) as letters:
            for letter in letters:
                if message_id is not None and letter.id != message_id:
                    continue
                msg = letter.message
                headers = {k: v for k, v in (msg.headers or {}).items()
                           if k not in _DEAD_LETTER_HEADERS and k != "x-death"}
                headers[RETRY_HEADER] = 0
                headers[REPLAYS_HEADER] = int(headers.get(REPLAYS_HEADER) or 0) + 1
                producer.publish(letter.body, exchange="", routing_key=queue,
                                 headers=headers, content_type=msg.content_type,
                                 content_encoding=msg.content_encoding, delivery_mode=2,
                                 mandatory=True)
                msg.ack()
                moved += 1
    return moved


def drop(amqp_uri: str, queue: str, message_id: str | None) -> int:
    """Remove the selected dead letters (``message_id`` None: all of them)."""
    dropped = 0
    queue = work_queue(queue)
    with Connection(amqp_uri) as conn:
        if not _exists(conn, queue + DLQ_SUFFIX):
            raise SystemExit(f"dlq: no queue {queue}{DLQ_SUFFIX} on this broker")
        with _taken(conn, queue) as letters:
            for letter in letters:
                if message_id is None or letter.id == message_id:
                    letter.message.ack()
                    dropped += 1
    return dropped


def _age(seconds: float) -> str:
    if seconds < 0:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--amqp-uri", help="broker (default: message_queue of the settings)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="show dead letters")
    p_list.add_argument("queues", nargs="*", help="work queues (default: all)")
    p_replay = sub.add_parser("replay", help="move dead letters back to their work queue")
    p_replay.add_argument("queue")
    p_replay.add_argument("--id", help="only this message")
    p_drop = sub.add_parser("drop", help="delete dead letters")
    p_drop.add_argument("queue")
    which = p_drop.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", help="only this message")
    which.add_argument("--all", action="store_true", help="every message of the queue")
    args = parser.parse_args(argv)
    uri = args.amqp_uri
    if not uri:
        from shared.settings import settings_or_exit

        uri = settings_or_exit().message_queue.amqp_uri

    if args.command == "list":
        listed = list_dead_letters(uri, args.queues)
        for queue in [work_queue(q) for q in args.queues]:
            if queue not in listed:
                print(f"{queue}{DLQ_SUFFIX}: no such queue")
        for queue, letters in listed.items():
            print(f"{queue}{DLQ_SUFFIX}: {len(letters)} message(s)")
            for letter in letters:
                print(f"  {letter.id}  age {_age(letter.age_s):>6}  {letter.service:<8} "
                      f"retries {letter.retries}  {letter.reason.splitlines()[0][:200]}")
        return 0
    if args.command == "replay":
        moved = replay(uri, args.queue, args.id)
        print(f"replayed {moved} message(s) to {work_queue(args.queue)}")
        return 0 if moved or args.id is None else 1
    dropped = drop(uri, args.queue, None if args.all else args.id)
    print(f"dropped {dropped} message(s) from {work_queue(args.queue)}{DLQ_SUFFIX}")
    return 0 if dropped or args.all else 1


if __name__ == "__main__":
    raise SystemExit(main())
