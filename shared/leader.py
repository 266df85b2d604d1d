"""Leader election through a Redis lease: duties that must run once when a service runs twice.

Two instances of a service share their queues (competing consumers), but a few duties must
be done by one of them only: execute's reconciliation sweep, risk's live watch, notify's
health watch and daily summary, the Telegram worker's polling. Each duty has a lease in
Redis, held through redis-py's :class:`redis.lock.Lock` (``SET NX PX`` with a token,
renewed by ``reacquire``'s compare-and-PEXPIRE script, released by compare-and-DEL):

* every ``high_availability.leader_renew_s`` each instance calls :meth:`LeaderLease.step`:
  the holder renews the lease to ``leader_ttl_s``, the others try to take it;
* a dead leader stops renewing and its lease expires: another instance takes it at its
  next step, so the duty resumes within ``ttl + renew`` (6 s + 2 s by default);
* fencing: a leader acts only while :meth:`LeaderLease.leads` is true, i.e. until
  ``ttl * FENCE`` after the start of its last successful renewal, which is before Redis can
  expire the lease and hand it to another instance; a renewal refused because the lease is
  no longer ours ends leadership at once. Each acquisition increments ``<key>:epoch``, a
  monotonic fencing token shown with the holder in ``/ready``;
* a clean stop releases the lease, so a rolling restart hands over at once.

The gauge ``phoenix95_leader{duty}`` is 1 on the instance that leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
from nameko.extensions import DependencyProvider
from prometheus_client import Gauge
from redis.exceptions import LockError, RedisError

from shared.names import LEADER_KEY_PREFIX
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

LEADER = Gauge("phoenix95_leader", "1 while this instance leads the duty", ["duty"])
# a leader stops acting this fraction of the TTL after its last renewal started: the lease
# in Redis lives a full TTL from a moment after that, so the two never overlap (the margin
# covers clock-rate drift between this host and Redis)
FENCE = 0.8
# how often a periodic duty's timer asks ``due``: a new leader starts within this
LEADER_TICK_S = 1.0


class LeaderLease:
    """One instance's claim on one duty; see the module docstring."""

    def __init__(self, client: redis.Redis, duty: str, identity: str, *, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.duty = duty
        self.identity = identity
        self.ttl_s = ttl_s
        self.key = f"{LEADER_KEY_PREFIX}{duty}"
        self.client = client
        self.clock = clock
        # thread_local=False: the token must be seen by every green thread of the process
        self._lock = client.lock(self.key, timeout=ttl_s, blocking=False, thread_local=False)
        self._held = False
        self._deadline = 0.0
        self.epoch = 0
        self.holder: str | None = None
        self._ran_epoch = -1
        self._last_run = 0.0

    @classmethod
    def from_settings(cls, client: redis.Redis, duty: str, identity: str,
                      settings: Settings | None = None) -> LeaderLease:
        ha = (settings or get_settings()).high_availability
        return cls(client, duty, identity, ttl_s=ha.leader_ttl_s)

    # --- the election ---
    def step(self) -> bool:
        """Renew the lease if held, else try to take it: True while this instance leads."""
        started = self.clock()
        try:
            if self._held:
                self._lock.reacquire()
            elif self._lock.acquire(blocking=False, token=self.identity):
                self._held = True
                self.epoch = int(self.client.incr(f"{self.key}:epoch"))
                log.warning("%s: leading duty %s (epoch %d)", self.identity, self.duty,
                            self.epoch)
            if self._held:
                self._deadline = started + self.ttl_s * FENCE
                self.holder = self.identity
            else:
                self.holder = _text(self.client.get(self.key))
        except LockError:  # LockNotOwnedError included: expired and maybe taken by another
            self._lose("the lease is no longer ours")
            self.holder = self._current_holder()
        except RedisError as exc:
            # keep the local deadline: leadership lapses by itself if Redis stays away
            log.warning("%s: lease of %s not renewed: %s", self.identity, self.duty, exc)
        self._export()
        return self.leads()

    def leads(self) -> bool:
        """True while this instance may act on the duty (the fencing check)."""
        if self._held and self.clock() >= self._deadline:
            self._lose(f"not renewed for {self.ttl_s * FENCE:.1f} s")
        return self._held

    def due(self, interval_s: float) -> bool:
        """For a periodic duty: True when leading and either the term just began (a new
        leader catches up at once) or ``interval_s`` passed since the last run."""
        if not self.leads():
            return False
        now = self.clock()
        if self._ran_epoch != self.epoch or now - self._last_run >= interval_s:
            self._ran_epoch, self._last_run = self.epoch, now
            return True
        return False

    def release(self) -> None:
        """Hand the duty over at once (clean stop)."""
        if self._held:
            self._held = False
            try:
                self._lock.release()
            except (LockError, RedisError) as exc:
                log.info("%s: lease of %s not released: %s", self.identity, self.duty, exc)
        self._export()

    def wire(self) -> dict[str, Any]:
        leading = self.leads()
        return {"leading": leading, "holder": self.holder, "epoch": self.epoch if leading
                else None, "instance": self.identity}

    def _current_holder(self) -> str | None:
        try:
            return _text(self.client.get(self.key))
        except RedisError:
            return None

    def _lose(self, why: str) -> None:
        if self._held:
            log.warning("%s: stopped leading duty %s: %s", self.identity, self.duty, why)
        self._held = False
        self._lock.local.token = None  # the next step acquires anew instead of renewing
        self._export()

    def _export(self) -> None:
        LEADER.labels(self.duty).set(1 if self._held else 0)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class Leadership(DependencyProvider):
    """A Nameko service's lease on ``duty``: ``self.<attr>`` is its :class:`LeaderLease`.

    A managed thread steps the lease every ``leader_renew_s``; entrypoints doing the duty
    check ``leads()`` (or ``due(interval)``) before acting.
    """

    def __init__(self, duty: str) -> None:
        self.duty = duty
        self.lease: LeaderLease | None = None
        self._running = False

    def leads(self) -> bool:
        """For other extensions (a stream consumer reading only while leading)."""
        return self.lease is not None and self.lease.leads()

    def setup(self) -> None:
        from shared.nameko_deps import make_redis
        from shared.streams import consumer_name
        settings = get_settings()
        self.renew_s = settings.high_availability.leader_renew_s
        self.lease = LeaderLease.from_settings(
            make_redis(settings), self.duty, consumer_name(self.container.service_name),
            settings)

    def start(self) -> None:
        self._running = True
        self.container.spawn_managed_thread(self._run, identifier=f"Leadership[{self.duty}]")

    def _run(self) -> None:
        assert self.lease is not None
        while self._running:
            self.lease.step()
            time.sleep(self.renew_s)  # green under eventlet

    def stop(self) -> None:
        self._running = False
        if self.lease is not None:
            self.lease.release()

    def kill(self) -> None:
        self.stop()

    def get_dependency(self, worker_ctx: Any) -> LeaderLease:
        assert self.lease is not None
        return self.lease


# ------------------------------------------------------------------ asyncio processes


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=seconds)


async def run_while_leading(lease: LeaderLease, renew_s: float,
                            work: Callable[[asyncio.Event], Awaitable[None]],
                            shutdown: asyncio.Event | None = None) -> None:
    """An asyncio process's duty (the Telegram worker): wait for the lease, run
    ``work(stop)`` while it is held, set ``stop`` when it is lost and wait for it again.

    ``work`` returns once ``stop`` is set. SIGINT/SIGTERM (or ``shutdown``) end it all; a
    ``work`` that returns by itself ends it too. The lease is released on the way out.
    """
    shutdown = shutdown or asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        while not shutdown.is_set():
            for sig in (signal.SIGINT, signal.SIGTERM):  # ``work`` may have replaced them
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, shutdown.set)
            while not shutdown.is_set() and not await asyncio.to_thread(lease.step):
                await _wait(shutdown, renew_s)
            if shutdown.is_set():
                return
            stop = asyncio.Event()
            lost = asyncio.Event()

            async def keep(stop: asyncio.Event = stop, lost: asyncio.Event = lost) -> None:
                while not stop.is_set():
                    await _wait(shutdown, renew_s)
                    if shutdown.is_set() or not await asyncio.to_thread(lease.step):
                        if not shutdown.is_set():
                            lost.set()
                        stop.set()

            keeper = asyncio.create_task(keep())
            try:
                await work(stop)
            finally:
                stop.set()
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            if not lost.is_set():
                return  # stopped by a signal, or done
            log.warning("%s: lost the lead of %s; waiting to lead again", lease.identity,
                        lease.duty)
    finally:
        await asyncio.to_thread(lease.release)
