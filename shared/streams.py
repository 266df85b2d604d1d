"""``@stream_consume``: a Nameko entrypoint reading a Redis Streams consumer group.

One managed thread per container loops on ``XREADGROUP ... BLOCK`` and spawns one worker
per entry (``spawn_worker`` blocks while the worker pool is full: natural backpressure).
An entry is acknowledged (``XACK``) only in ``handle_result`` when the worker succeeded,
so an entry whose handler raised stays pending. At start, and every ``claim_every_s``
seconds, entries pending longer than ``claim_idle_ms`` (a crashed process's, or a failed
one's) are taken over with ``XAUTOCLAIM`` and processed again; an entry delivered more
than ``max_deliveries`` times is acknowledged and logged as dropped, so one poison entry
cannot loop forever. The group is created (``MKSTREAM``) at ``start_id`` when missing.

The consumer name is unique per process (``<service>-<host>-<pid>-<random>``), so two
instances of a service share the group's entries instead of stealing each other's.

Usage::

    class Watcher:
        name = "risk"

        @stream_consume("market:stream", "risk_processors")
        def on_market(self, fields: dict[str, str]) -> None:
            ...

The handler receives the entry's fields (``str -> str``); with ``with_id=True`` it
receives ``(entry_id, fields)``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from functools import partial
from typing import Any

import eventlet
import redis
from nameko.extensions import Entrypoint

from shared.leader import Leadership
from shared.redis_conn import redis_client
from shared.settings import get_settings

log = logging.getLogger(__name__)

Fields = dict[str, str]


def consumer_name(service: str) -> str:
    """A consumer name no other process shares."""
    return f"{service}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class RedisStreamConsumer(Entrypoint):
    """Consume ``stream`` as a member of ``group``; see the module docstring.

    Parameters
    ----------
    stream, group:
        The Redis stream and its consumer group.
    count:
        Entries read per ``XREADGROUP`` call.
    block_ms:
        ``BLOCK`` of each read; default ``redis_streams.block_ms``.
    start_id:
        Where a newly created group starts (``"$"``: only new entries; ``"0"``: all).
    claim_idle_ms:
        Pending entries idle this long are claimed from their (dead) consumer.
    claim_every_s:
        How often the loop looks for such entries after the one at start.
    max_deliveries:
        An entry delivered more often than this is acknowledged and logged as dropped.
    with_id:
        Pass ``(entry_id, fields)`` to the handler instead of ``fields``.
    leader:
        A duty (shared/leader.py) the service holds a ``Leadership`` on: only the instance
        leading it reads the stream (a duty that must run once, e.g. risk's live watch);
        the others read nothing until they lead.
    """

    def __init__(self, stream: str, group: str, *, count: int = 10,
                 block_ms: int | None = None, start_id: str = "$",
                 claim_idle_ms: int = 30_000, claim_every_s: float = 30.0,
                 max_deliveries: int = 5, with_id: bool = False, leader: str | None = None,
                 **kwargs: Any) -> None:
        self.stream = stream
        self.group = group
        self.count = count
        self.block_ms = block_ms
        self.start_id = start_id
        self.claim_idle_ms = claim_idle_ms
        self.claim_every_s = claim_every_s
        self.max_deliveries = max_deliveries
        self.with_id = with_id
        self.leader = leader
        self._leadership: Leadership | None = None
        self._client: redis.Redis | None = None
        self._thread: Any = None
        self._running = False
        self.consumer = ""
        super().__init__(**kwargs)

    # --- lifecycle ---
    def setup(self) -> None:
        settings = get_settings()
        self._redis_settings = settings.redis_streams
        self._idle_s = settings.high_availability.leader_renew_s / 2
        if self.block_ms is None:
            self.block_ms = settings.redis_streams.block_ms
        self.consumer = consumer_name(self.container.service_name)
        if self.leader is not None:
            found = [dep for dep in self.container.dependencies
                     if isinstance(dep, Leadership) and dep.duty == self.leader]
            if not found:
                raise RuntimeError(f"{self.stream}/{self.group}: leader={self.leader!r} needs "
                                   f"a Leadership({self.leader!r}) dependency on the service")
            self._leadership = found[0]

    def start(self) -> None:
        block_s = (self.block_ms or 1000) / 1000
        # this process's ACL user, Sentinel and TLS settings, like every other client;
        # behind Sentinel the reads follow the master after a failover (a client pinned to
        # the old master's address reads a replica forever: XREADGROUP is a write, refused
        # there - measured in the HA lab)
        self._client = redis_client(
            self._redis_settings, decode_responses=True, socket_connect_timeout=5,
            socket_timeout=block_s + 5, health_check_interval=30)
        self._running = True
        self._thread = self.container.spawn_managed_thread(
            self.run, identifier=f"RedisStreamConsumer.run[{self.stream}/{self.group}]")

    def stop(self) -> None:
        # the loop ends after its current read (<= block_ms); workers in flight still ack
        self._running = False

    def kill(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.kill()

    # --- the loop ---
    def conn(self) -> redis.Redis:
        if self._client is None:
            raise RuntimeError("stream consumer not started")
        return self._client

    def ensure_group(self) -> None:
        try:
            self.conn().xgroup_create(self.stream, self.group, id=self.start_id, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def run(self) -> None:
        next_claim = 0.0
        ready = False
        while self._running:
            if self._leadership is not None and not self._leadership.leads():
                eventlet.sleep(self._idle_s)  # a follower: the leader alone reads
                continue
            try:
                if not ready:
                    self.ensure_group()
                    ready = True
                if time.monotonic() >= next_claim:
                    self.claim_stale()
                    next_claim = time.monotonic() + self.claim_every_s
                replies: Any = self.conn().xreadgroup(
                    self.group, self.consumer, {self.stream: ">"}, count=self.count,
                    block=self.block_ms)
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):  # stream or group deleted under us
                    ready = False
                    continue
                log.error("%s/%s: %s", self.stream, self.group, exc)
                eventlet.sleep(1.0)
                continue
            except redis.RedisError as exc:
                log.warning("%s/%s: redis unavailable (%s); retrying", self.stream,
                            self.group, exc)
                eventlet.sleep(1.0)
                continue
            for _stream, entries in replies or []:
                for entry_id, fields in entries:
                    if not self._running:
                        return  # not acked: stays pending, claimed after a restart
                    self.dispatch(entry_id, fields or {})

    def claim_stale(self) -> int:
        """Take over entries pending longer than ``claim_idle_ms``; return how many."""
        start, claimed = "0-0", 0
        while True:
            reply: Any = self.conn().xautoclaim(self.stream, self.group, self.consumer,
                                                self.claim_idle_ms, start_id=start, count=100)
            start, entries = str(reply[0]), list(reply[1])
            for entry_id, fields in entries:
                if self._delivered_too_often(entry_id):
                    continue
                claimed += 1
                self.dispatch(entry_id, fields or {})
            if start == "0-0" or not entries:
                return claimed

    def _delivered_too_often(self, entry_id: str) -> bool:
        info = self.conn().xpending_range(self.stream, self.group, min=entry_id, max=entry_id,
                                          count=1)
        if info and int(info[0]["times_delivered"]) > self.max_deliveries:
            log.error("%s/%s: dropping entry %s after %s deliveries", self.stream, self.group,
                      entry_id, info[0]["times_delivered"])
            self.conn().xack(self.stream, self.group, entry_id)
            return True
        return False

    def dispatch(self, entry_id: str, fields: Fields) -> None:
        args = (entry_id, fields) if self.with_id else (fields,)
        self.container.spawn_worker(self, args, {},
                                    handle_result=partial(self.handle_result, entry_id))

    def handle_result(self, entry_id: str, worker_ctx: Any, result: Any,
                      exc_info: Any) -> tuple[Any, Any]:
        if exc_info is None:
            try:
                self.conn().xack(self.stream, self.group, entry_id)
            except redis.RedisError as exc:  # stays pending; claimed and redone later
                log.warning("%s/%s: XACK %s failed: %s", self.stream, self.group, entry_id,
                            exc)
        else:
            log.warning("%s/%s: entry %s failed (%s); left pending", self.stream, self.group,
                        entry_id, exc_info[1])
        return result, exc_info


stream_consume = RedisStreamConsumer.decorator
