"""Atomic margin/exposure reservations in Redis, shared by every risk instance.

An approved intent reserves its margin and notional under its ``signal_id`` until the
trade is rejected downstream (``execute.trade_failed``), the position closes
(``execute.position_closed``), the exchange shows the filled position, or the TTL ends.
The caps that concurrent checks could overshoot together (open positions, total
exposure, free margin, one position per symbol, the order rate) are re-checked inside
one Lua script against every live reservation, so 50 concurrent checks against a cap
that allows 3 approve exactly 3, however many risk instances answer them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from decimal import Decimal

import redis

from shared.names import RISK_ORDER_RATE_KEY, RISK_RESERVATIONS_KEY

RATE_WINDOW_MS = 60_000

# KEYS: 1 reservations hash, 2 order-rate zset
# ARGV: 1 now_ms, 2 ttl_ms, 3 signal_id, 4 symbol, 5 margin, 6 notional, 7 open_count,
#       8 open_exposure, 9 available, 10 max_positions, 11 max_exposure,
#       12 one_per_symbol (1|0), 13 open symbols (comma list), 14 rate limit,
#       15 rate window ms, 16 positions_as_of_ms
_RESERVE = """
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local me, symbol = ARGV[3], ARGV[4]
local my_margin, my_notional = tonumber(ARGV[5]), tonumber(ARGV[6])
local one_per_symbol = ARGV[12] == '1'
local as_of = tonumber(ARGV[16])
local open = {}
for s in string.gmatch(ARGV[13], '[^,]+') do open[s] = true end
local count, margin, notional, same = 0, 0, 0, false
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local id, r = all[i], cjson.decode(all[i + 1])
  local filled = r.filled and r.filled > 0 and r.filled <= as_of and open[r.symbol]
  if r.exp <= now or filled or (one_per_symbol and open[r.symbol]) then
    redis.call('HDEL', KEYS[1], id)
  elseif id ~= me then
    count = count + 1
    margin = margin + r.margin
    notional = notional + r.notional
    if r.symbol == symbol then same = true end
  end
end
local reasons = {}
if tonumber(ARGV[7]) + count + 1 > tonumber(ARGV[10]) then
  table.insert(reasons, 'max_open_positions')
end
if tonumber(ARGV[8]) + notional + my_notional > tonumber(ARGV[11]) then
  table.insert(reasons, 'max_exposure_exceeded')
end
if margin + my_margin > tonumber(ARGV[9]) then
  table.insert(reasons, 'insufficient_margin')
end
if one_per_symbol and (same or open[symbol]) then
  table.insert(reasons, 'position_already_open')
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[15]))
local again = redis.call('ZSCORE', KEYS[2], me)
if not again and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[14]) then
  table.insert(reasons, 'order_rate_exceeded')
end
if #reasons == 0 then
  redis.call('HSET', KEYS[1], me, cjson.encode({symbol = symbol, margin = my_margin,
    notional = my_notional, exp = now + ttl, created = now, filled = 0}))
  if not again then redis.call('ZADD', KEYS[2], now, me) end
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[15]) * 2)
end
local out = {tostring(count), tostring(margin), tostring(notional)}
for _, r in ipairs(reasons) do table.insert(out, r) end
return out
"""

# mark a reservation filled at ARGV[2] (ms): dropped once positions fetched after that
# moment show its symbol (a heartbeat after the fill is not enough: the fill's own
# user-data event can come later, and until then only the reservation holds the symbol)
_MARK_FILLED = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local r = cjson.decode(raw)
r.filled = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(r))
return 1
"""


@dataclass(frozen=True)
class Totals:
    """Live reservations other than the one being checked."""

    count: int = 0
    margin: Decimal = Decimal(0)
    notional: Decimal = Decimal(0)
    symbols: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Caps:
    """What the account already holds (from the exchange) and the limits in force."""

    open_count: int
    open_exposure: Decimal
    available: Decimal
    max_positions: int
    max_exposure: Decimal
    one_per_symbol: bool
    open_symbols: frozenset[str]
    rate_limit: int
    positions_as_of_ms: int


@dataclass(frozen=True)
class Reservation:
    approved: bool
    reasons: tuple[str, ...]
    others: Totals


def _now_ms() -> int:
    return int(time.time() * 1000)


class ReservationBook:
    """The shared reservation ledger; every method is one atomic Redis round trip."""

    def __init__(self, client: redis.Redis, ttl_s: float,
                 key: str = RISK_RESERVATIONS_KEY, rate_key: str = RISK_ORDER_RATE_KEY) -> None:
        self.client = client
        self.ttl_ms = int(ttl_s * 1000)
        self.key = key
        self.rate_key = rate_key
        self._reserve = client.register_script(_RESERVE)
        self._mark = client.register_script(_MARK_FILLED)

    def reserve(self, signal_id: str, symbol: str, margin: Decimal, notional: Decimal,
                caps: Caps) -> Reservation:
        """Reserve if every cap still holds with all live reservations; else say why."""
        reply = self._reserve(keys=[self.key, self.rate_key], args=[
            _now_ms(), self.ttl_ms, signal_id, symbol, str(margin), str(notional),
            caps.open_count, str(caps.open_exposure), str(caps.available),
            caps.max_positions, str(caps.max_exposure), 1 if caps.one_per_symbol else 0,
            ",".join(sorted(caps.open_symbols)), caps.rate_limit, RATE_WINDOW_MS,
            caps.positions_as_of_ms])
        values = [v.decode() if isinstance(v, bytes) else str(v) for v in reply]
        others = Totals(int(values[0]), Decimal(values[1]), Decimal(values[2]))
        reasons = tuple(values[3:])
        return Reservation(not reasons, reasons, others)

    def totals(self, exclude: str = "", positions_as_of_ms: int = 0,
               open_symbols: frozenset[str] = frozenset()) -> Totals:
        """Live reservations without ``exclude``'s own: unexpired, and not filled before
        positions fetched at ``positions_as_of_ms`` that show them (in ``open_symbols``)."""
        now = _now_ms()
        count, margin, notional, symbols = 0, Decimal(0), Decimal(0), set()
        for sid, raw in self.client.hgetall(self.key).items():
            sid = sid.decode() if isinstance(sid, bytes) else sid
            r = json.loads(raw)
            filled = int(r.get("filled") or 0)
            shown = 0 < filled <= positions_as_of_ms and r["symbol"] in open_symbols
            if sid == exclude or r["exp"] <= now or shown:
                continue
            count += 1
            margin += Decimal(str(r["margin"]))
            notional += Decimal(str(r["notional"]))
            symbols.add(r["symbol"])
        return Totals(count, margin, notional, frozenset(symbols))

    def release(self, signal_id: str) -> bool:
        """Give a reservation back (trade failed or position closed)."""
        return bool(signal_id) and bool(self.client.hdel(self.key, signal_id))

    def mark_filled(self, signal_id: str, at_ms: int | None = None) -> bool:
        """The entry filled: drop the reservation once the exchange shows the position."""
        return bool(signal_id) and bool(self._mark(keys=[self.key],
                                                   args=[signal_id, at_ms or _now_ms()]))
