"""Two real ``nameko run`` processes (tests.support.leader_probe) contend for one duty on a
real Redis (DB 6): exactly one acts; a killed leader is replaced; a leader frozen past its
lease (SIGSTOP) and then resumed does not act again (fencing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.conftest import TEST_SECRETS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/6"
TTL_S, RENEW_S = 2.0, 0.5


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or condition}")


@dataclass(frozen=True)
class Action:
    identity: str
    epoch: int
    at: float
    what: str

    @property
    def pid(self) -> int:
        return int(self.identity.rsplit("-", 2)[1])  # <service>-<host>-<pid>-<random>


@dataclass
class Contest:
    duty: str
    stream: str
    rds: redis.Redis
    procs: dict[int, subprocess.Popen[bytes]]

    def actions(self) -> list[Action]:
        out = []
        for raw in self.rds.lrange(f"{self.duty}:actions", 0, -1):
            identity, epoch, at, what = raw.decode().split("|", 3)
            out.append(Action(identity, int(epoch), float(at), what))
        return out

    def holder(self) -> str | None:
        value = self.rds.get(f"phoenix95:leader:{self.duty}")
        return value.decode() if value else None

    def actors_since(self, since: float) -> set[int]:
        return {a.pid for a in self.actions() if a.at > since}


@pytest.fixture
def contest(tmp_path: Path, secrets_env: dict[str, str]) -> Iterator[Contest]:
    rds = redis.Redis.from_url(REDIS_URL)
    duty = f"probe_{uuid.uuid4().hex[:8]}"
    stream = f"{duty}:stream"
    config = tmp_path / "probe.yaml"
    config.write_text(yaml.safe_dump({"AMQP_URI": "amqp://guest:guest@127.0.0.1:5672/",
                                      "serializer": "json"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOENIX")}
    env.update(TEST_SECRETS)
    env.update({"PHOENIX_DOTENV": str(tmp_path / "absent.env"),
                "PHOENIX__REDIS_STREAMS__URL": REDIS_URL,
                "PHOENIX__REDIS_STREAMS__BLOCK_MS": "200",
                "PHOENIX__HIGH_AVAILABILITY__LEADER_TTL_S": str(TTL_S),
                "PHOENIX__HIGH_AVAILABILITY__LEADER_RENEW_S": str(RENEW_S),
                "PROBE_DUTY": duty, "PROBE_STREAM": stream})
    nameko = Path(sys.executable).with_name("nameko")
    procs: dict[int, subprocess.Popen[bytes]] = {}
    for n in range(2):
        with open(tmp_path / f"probe{n}.log", "wb") as log:
            proc = subprocess.Popen(
                [str(nameko), "run", "--config", str(config), "tests.support.leader_probe"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        procs[proc.pid] = proc
    try:
        yield Contest(duty, stream, rds, procs)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
                proc.wait(timeout=20)
        rds.delete(f"{duty}:actions", stream, f"phoenix95:leader:{duty}",
                   f"phoenix95:leader:{duty}:epoch")
        rds.close()


def test_exactly_one_instance_acts_and_a_killed_leader_is_replaced(contest: Contest) -> None:
    wait_for(lambda: len(contest.actions()) >= 10, what="the leader to act")
    for n in range(20):
        contest.rds.xadd(contest.stream, {"n": str(n)})
    wait_for(lambda: sum(a.what.startswith("entry") for a in contest.actions()) >= 20,
             what="the leader to read the stream")

    first = contest.actions()
    assert len({a.pid for a in first}) == 1  # one actor, on the timer and the stream
    leader = first[0].pid
    assert contest.holder() == first[0].identity

    killed_at = time.time()
    contest.procs[leader].kill()  # SIGKILL: no release, the lease must expire
    contest.procs[leader].wait()
    wait_for(lambda: contest.actors_since(killed_at), what="another instance to take over")
    contest.rds.xadd(contest.stream, {"n": "after"})
    wait_for(lambda: any(a.what == "entry:after" for a in contest.actions()),
             what="the new leader to read the stream")

    after = [a for a in contest.actions() if a.at > killed_at]
    assert {a.pid for a in after} == set(contest.procs) - {leader}
    assert min(a.epoch for a in after) > max(a.epoch for a in first)  # fencing token
    print(f"duty resumed {after[0].at - killed_at:.2f} s after kill -9 (ttl {TTL_S} s)")


def test_a_frozen_leader_does_not_act_again_once_another_took_over(contest: Contest) -> None:
    wait_for(lambda: len(contest.actions()) >= 5, what="the leader to act")
    leader = contest.actions()[0].pid

    contest.procs[leader].send_signal(signal.SIGSTOP)  # alive, holding sockets, not renewing
    stopped_at = time.time()
    wait_for(lambda: contest.actors_since(stopped_at), what="the other to take over")
    taken_over = min(a.at for a in contest.actions() if a.at > stopped_at)
    resumed_at = time.time()
    contest.procs[leader].send_signal(signal.SIGCONT)
    # the resumed one runs its timer, stream loop and renewal again: give it time to try
    wait_for(lambda: len([a for a in contest.actions() if a.at > resumed_at]) >= 20,
             what="the new leader to keep acting")
    for n in range(10):
        contest.rds.xadd(contest.stream, {"n": str(n)})
    wait_for(lambda: sum(a.what.startswith("entry") for a in contest.actions()
                         if a.at > resumed_at) >= 10, what="the stream to be read")

    late = [a for a in contest.actions() if a.at > taken_over]
    assert {a.pid for a in late} == set(contest.procs) - {leader}
    assert contest.holder() is not None and str(leader) not in contest.holder().split("-")
