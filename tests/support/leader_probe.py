"""Two of these run as ``nameko run`` processes in tests/integration/test_leader_election.py.

Each holds a :class:`shared.leader.Leadership` on ``PROBE_DUTY`` and records in Redis every
time it acts on the duty: a timer acting while ``leads()`` (like execute's sweep) and a
stream consumer reading ``PROBE_STREAM`` only while leading (like risk's live watch).
"""

from __future__ import annotations

import os
import time

import redis
from nameko.timer import timer

from shared.leader import LeaderLease, Leadership
from shared.streams import stream_consume

DUTY = os.environ.get("PROBE_DUTY", "probe_duty")
STREAM = os.environ.get("PROBE_STREAM", "probe:stream")
ACTIONS = f"{DUTY}:actions"  # list of "identity|epoch|unix time|what"


class LeaderProbe:
    name = "leader_probe"

    leader: LeaderLease = Leadership(DUTY)

    def _record(self, what: str) -> None:
        client = redis.Redis.from_url(os.environ["PHOENIX__REDIS_STREAMS__URL"])
        client.rpush(ACTIONS, f"{self.leader.identity}|{self.leader.epoch}|{time.time()}|{what}")
        client.close()

    @timer(interval=0.2)
    def duty(self) -> None:
        if self.leader.leads():
            self._record("timer")

    @stream_consume(STREAM, f"{DUTY}_group", count=10, leader=DUTY)
    def on_entry(self, fields: dict[str, str]) -> None:
        if self.leader.leads():
            self._record(f"entry:{fields.get('n', '')}")
