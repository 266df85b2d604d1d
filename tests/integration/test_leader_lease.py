"""shared.leader.LeaderLease against a real Redis (DB 6, a duty name of each test's own)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis

from shared.leader import FENCE, LeaderLease, run_while_leading
from shared.settings import ConfigError, load_settings

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/6"


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or condition}")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    rds = redis.Redis.from_url(REDIS_URL)
    yield rds
    rds.close()


@pytest.fixture
def duty(client: redis.Redis) -> Iterator[str]:
    name = f"test_duty_{uuid.uuid4().hex[:8]}"
    yield name
    client.delete(f"phoenix95:leader:{name}", f"phoenix95:leader:{name}:epoch")


def test_of_two_contenders_exactly_one_leads_and_both_know_who(client: redis.Redis,
                                                               duty: str) -> None:
    a = LeaderLease(client, duty, "a", ttl_s=30)
    b = LeaderLease(client, duty, "b", ttl_s=30)

    results = [a.step(), b.step(), a.step(), b.step()]

    assert results == [True, False, True, False]
    assert a.leads() and not b.leads()
    assert a.holder == b.holder == "a"
    assert a.wire() == {"leading": True, "holder": "a", "epoch": 1, "instance": "a"}
    assert b.wire()["epoch"] is None


def test_a_leader_that_stops_renewing_is_replaced_once_its_lease_expires(
        client: redis.Redis, duty: str) -> None:
    a = LeaderLease(client, duty, "a", ttl_s=1.0)
    b = LeaderLease(client, duty, "b", ttl_s=1.0)
    assert a.step() and not b.step()

    # a is dead (no more steps); b keeps stepping as its renew loop would
    wait_for(b.step, timeout=10, what="b to take over")

    assert client.get(f"phoenix95:leader:{duty}") == b"b"
    assert b.epoch == a.epoch + 1  # the fencing token moved on
    assert not a.leads()  # a's own clock already ended its term
    assert not a.step() and a.holder == "b"  # and it does not take the lease back


def test_a_leader_that_could_not_renew_stops_acting_before_its_lease_expires(
        client: redis.Redis, duty: str) -> None:
    clock = FakeClock()
    a = LeaderLease(client, duty, "a", ttl_s=10.0, clock=clock)
    assert a.step()

    clock.now += 10.0 * FENCE - 0.01
    assert a.leads()
    clock.now += 0.02  # no renewal for ttl * FENCE: Redis still holds it for a
    assert client.pttl(f"phoenix95:leader:{duty}") > 0

    assert not a.leads()


def test_a_leader_whose_lease_was_taken_stops_at_its_next_renewal(client: redis.Redis,
                                                                  duty: str) -> None:
    a = LeaderLease(client, duty, "a", ttl_s=30)
    b = LeaderLease(client, duty, "b", ttl_s=30)
    assert a.step()
    # a paused past its lease (GC, SIGSTOP, partition); meanwhile b took it
    client.delete(f"phoenix95:leader:{duty}")
    assert b.step()

    assert not a.step()
    assert not a.leads() and a.holder == "b" and b.leads()


def test_a_clean_stop_hands_the_duty_over_at_once(client: redis.Redis, duty: str) -> None:
    a = LeaderLease(client, duty, "a", ttl_s=30)
    b = LeaderLease(client, duty, "b", ttl_s=30)
    assert a.step() and not b.step()

    a.release()

    assert not a.leads() and b.step()


def test_a_periodic_duty_runs_when_a_term_begins_then_every_interval(
        client: redis.Redis, duty: str) -> None:
    clock = FakeClock()
    a = LeaderLease(client, duty, "a", ttl_s=30, clock=clock)
    assert not a.due(60)  # not leading: never due
    a.step()

    assert a.due(60)  # a new leader catches up at once
    clock.now += 1
    a.step()
    assert not a.due(60)
    clock.now += 60
    a.step()
    assert a.due(60)
    a.release()
    assert not a.due(60)
    a.step()  # a new term
    assert a.due(60)


def test_renewal_must_fit_twice_in_the_ttl(monkeypatch: pytest.MonkeyPatch,
                                           secrets_env: dict[str, str]) -> None:
    monkeypatch.setenv("PHOENIX__HIGH_AVAILABILITY__LEADER_TTL_S", "3")
    monkeypatch.setenv("PHOENIX__HIGH_AVAILABILITY__LEADER_RENEW_S", "2")

    with pytest.raises(ConfigError, match="leader_renew_s"):
        load_settings()


# ------------------------------------------------- an asyncio process (Telegram worker)


def test_an_asyncio_duty_runs_on_one_process_and_stops_when_its_lease_is_taken(
        client: redis.Redis, duty: str) -> None:
    key = f"phoenix95:leader:{duty}"
    running: set[str] = set()
    both_seen: list[set[str]] = []
    started: list[str] = []

    def worker(name: str) -> Callable[[asyncio.Event], Awaitable[None]]:
        async def work(stop: asyncio.Event) -> None:
            running.add(name)
            started.append(name)
            both_seen.append(set(running))
            await stop.wait()
            running.discard(name)
        return work

    async def until(condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(30):
            while not condition():
                await asyncio.sleep(0.02)

    async def scenario() -> None:
        shutdown = asyncio.Event()
        leases = {n: LeaderLease(client, duty, n, ttl_s=2.0) for n in ("a", "b")}
        tasks = [asyncio.create_task(run_while_leading(leases[n], 0.2, worker(n), shutdown))
                 for n in ("a", "b")]
        await until(lambda: len(running) == 1)
        first = next(iter(running))
        # the lease expired while the leader was away and someone else took it
        client.set(key, "someone-else", px=1500)
        await until(lambda: not running)  # fenced: the leader stopped its work
        await until(lambda: len(running) == 1)  # then one of the two leads again
        shutdown.set()
        await asyncio.gather(*tasks)
        assert first in started

    asyncio.run(scenario())

    assert all(len(seen) == 1 for seen in both_seen)  # never two at once
    assert len(started) == 2 and not running
    assert client.get(key) is None  # released on shutdown
