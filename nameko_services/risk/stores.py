"""Risk's shared stores in Redis and SQL (the desk's building blocks).

* :class:`StateStore`: the trading state in SQL (survives every restart), mirrored to the
  Redis key ``phoenix95:trading_state`` on every change and at start, so brain can refuse
  a webhook without an RPC round trip;
* :class:`WarningLatch`: one alert per escalation, whichever instance saw the tick.
"""

from __future__ import annotations

import logging

import redis
from sqlalchemy.orm import sessionmaker

from nameko_services.risk.watch import RANK
from shared.db import RiskStateRow, utcnow
from shared.models import TradingState
from shared.names import RISK_THROTTLE_PREFIX, RISK_WARNINGS_KEY, TRADING_STATE_KEY

log = logging.getLogger(__name__)

STATES: tuple[TradingState, ...] = ("ACTIVE", "REDUCING", "HALTED")


class StateStore:
    """The trading state in SQL, so a restart of any service keeps a halt in force."""

    def __init__(self, sessions: sessionmaker, client: redis.Redis | None = None,
                 key: str = TRADING_STATE_KEY) -> None:
        self._sessions = sessions
        self._redis = client
        self.key = key

    def get(self) -> tuple[TradingState, str]:
        with self._sessions() as s:
            row = s.get(RiskStateRow, 1)
            if row is None:
                return "ACTIVE", ""
            return row.state, row.reason

    def set(self, state: TradingState, reason: str) -> tuple[TradingState, str]:
        """Store durably, then mirror; returns (previous state, reason)."""
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}")
        with self._sessions.begin() as s:
            row = s.get(RiskStateRow, 1)
            previous: TradingState = row.state if row else "ACTIVE"
            if row is None:
                s.add(RiskStateRow(id=1, state=state, reason=reason, updated_at=utcnow()))
            else:
                row.state, row.reason, row.updated_at = state, reason, utcnow()
        self.mirror(state)
        return previous, reason

    def mirror(self, state: str | None = None) -> str:
        """Write the durable state to Redis (brain's fast path); SQL stays the truth."""
        state = state or self.get()[0]
        if self._redis is not None:
            try:
                self._redis.set(self.key, state)
            except redis.RedisError as exc:
                log.error("could not mirror trading state %s to redis: %s", state, exc)
        return state


class WarningLatch:
    """Alert once per escalation of a (symbol, kind), shared by every risk instance."""

    _SCRIPT = """
    local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
    local new = tonumber(ARGV[2])
    if new == 0 then redis.call('HDEL', KEYS[1], ARGV[1]) return 0 end
    if new ~= cur then redis.call('HSET', KEYS[1], ARGV[1], new) end
    if new > cur then return 1 end
    return 0
    """

    def __init__(self, client: redis.Redis, key: str = RISK_WARNINGS_KEY,
                 throttle_prefix: str = RISK_THROTTLE_PREFIX) -> None:
        self.client = client
        self.key = key
        self.throttle_prefix = throttle_prefix
        self._latch = client.register_script(self._SCRIPT)

    def escalated(self, symbol: str, kind: str, level: str) -> bool:
        """Record ``level`` (``""`` clears); True when it is higher than the last one."""
        return bool(self._latch(keys=[self.key], args=[f"{symbol}:{kind}", RANK[level]]))

    def forget_except(self, symbols: set[str]) -> None:
        fields = [str(f) for f in self.client.hkeys(self.key)]
        stale = [f for f in fields if f.split(":", 1)[0] not in symbols]
        if stale:
            self.client.hdel(self.key, *stale)

    def due(self, name: str, interval_s: float) -> bool:
        """True at most once per ``interval_s`` per name, across instances."""
        return bool(self.client.set(self.throttle_prefix + name, "1", nx=True,
                                    px=max(1, int(interval_s * 1000))))
