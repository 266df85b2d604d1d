"""Start one Redis of the HA lab in the role Sentinel gives it (a supervisord program).

``python -m scripts.lab_redis CONF PORT --sentinels 26379,26380 --master-name phoenix95
[--initial-master 6380]`` replaces itself with ``redis-server CONF [--replicaof ...]``:

* Sentinel names another node as the master: start as its replica;
* Sentinel still names THIS node although it ran before (supervisord restarts it after a
  crash): wait until Sentinel has promoted the replica, then join it as a replica. Coming
  back as the master before the failover would serve clients from a restarted process whose
  last second of writes is gone, and the failover would then be skipped altogether;
* no Sentinel answers yet (the lab's first start): the configured role.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import redis

HOST = "127.0.0.1"
WAIT_FAILOVER_S = 30.0
MARKER = "started-once"


def sentinel_master(sentinels: list[int], name: str) -> tuple[str, int] | None:
    """The master most Sentinels answer with, or None when none answers."""
    votes: dict[tuple[str, int], int] = {}
    for port in sentinels:
        try:
            client = redis.Redis(host=HOST, port=port, socket_timeout=1,
                                 socket_connect_timeout=1)
            addr = client.sentinel_get_master_addr_by_name(name)
            client.close()
        except redis.RedisError:
            continue
        if isinstance(addr, (tuple, list)) and len(addr) == 2:
            host = addr[0].decode() if isinstance(addr[0], bytes) else str(addr[0])
            key = (host, int(addr[1]))
            votes[key] = votes.get(key, 0) + 1
    return max(votes, key=lambda k: votes[k]) if votes else None


def role_args(port: int, sentinels: list[int], name: str, initial_master: int | None,
              restarted: bool) -> list[str]:
    master = sentinel_master(sentinels, name)
    if master is None:
        return ["--replicaof", HOST, str(initial_master)] if initial_master else []
    if master[1] != port:
        return ["--replicaof", master[0], str(master[1])]
    if not restarted:
        return []
    deadline = time.monotonic() + WAIT_FAILOVER_S
    print(f"redis {port}: restarted while Sentinel still names it master; waiting for the "
          "failover", flush=True)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        master = sentinel_master(sentinels, name)
        if master is not None and master[1] != port:
            return ["--replicaof", master[0], str(master[1])]
    print(f"redis {port}: no failover within {WAIT_FAILOVER_S:.0f}s; starting as the master "
          "from its append-only file", flush=True)
    return []


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("conf")
    parser.add_argument("port", type=int)
    parser.add_argument("--sentinels", default="")
    parser.add_argument("--master-name", default="phoenix95")
    parser.add_argument("--initial-master", type=int)
    args = parser.parse_args(argv)
    sentinels = [int(p) for p in args.sentinels.split(",") if p]
    marker = Path(args.conf).parent / MARKER
    restarted = marker.exists()
    extra = role_args(args.port, sentinels, args.master_name, args.initial_master, restarted)
    marker.write_text(str(time.time()), encoding="utf-8")
    binary = shutil.which("redis-server") or "redis-server"
    command = [binary, args.conf, *extra]
    print("redis: " + " ".join(command), flush=True)
    sys.stdout.flush()
    os.execv(binary, command)


if __name__ == "__main__":
    main()
