"""Account state from the user-data stream, resynchronised by one REST snapshot per connect.

Order of work on a (re)connect: the private socket opens first, then the snapshot is taken,
then the events queued since the socket opened are applied in order. Every event carries
absolute values (position amount, wallet, order status), so replaying those that predate
the snapshot passes through intermediate states and ends at the current one.
"""

from __future__ import annotations

import logging
from typing import Any

from shared.names import REC_EXCHANGE_BALANCE, REC_EXCHANGE_POSITION
from shared.records import Record
from shared.state import Account, Balance, Order, Position, StateWriter, now_ms

from .metrics import FeedMetrics
from .parsing import Event, account_change, balance_record, event_ms, position_record
from .sink import RecordSink

log = logging.getLogger("phoenix95.feed.account")

SNAPSHOT = "SNAPSHOT"


class AccountBook:
    """The feed's account side (the loop's only)."""

    def __init__(self, writer: StateWriter, sink: RecordSink, metrics: FeedMetrics,
                 stream: str, asset: str = "USDT") -> None:
        self.writer = writer
        self.sink = sink
        self.metrics = metrics
        self.stream = stream
        self.asset = asset
        self.positions: dict[str, Position] = {}
        self.client: Any = None  # the current private socket (ccxt Client)
        self.connected = False
        self.synced = False  # a snapshot was stored since the current socket opened
        self.synced_ms = 0
        self.connects = 0

    @property
    def live(self) -> bool:
        """The account heartbeat may beat: connected and resynchronised since."""
        return self.connected and self.synced

    def on_connected(self, client: Any) -> None:
        self.client, self.connected, self.synced = client, True, False
        self.connects += 1
        if self.connects > 1:
            self.metrics.reconnects.labels("account").inc()

    def on_down(self, client: Any = None) -> bool:
        """The private socket (``client``, or whichever is current) is gone."""
        if client is not None and client is not self.client:
            return False  # a stale socket closing late
        was = self.connected
        self.client, self.connected, self.synced = None, False, False
        self.writer.mark_down(account=True)
        return was

    async def snapshot(self, ex: Any) -> Account:
        """One REST snapshot: balance, positions, open orders and open algo orders."""
        calls: list[tuple[str, Any, dict[str, Any]]] = [
            ("fetch_balance", ex.fetch_balance, {}),
            ("fetch_positions", ex.fetch_positions, {}),
            ("fetch_open_orders", ex.fetch_open_orders, {}),
            ("fetch_open_algo_orders", ex.fetch_open_orders, {"params": {"trigger": True}}),
        ]
        results: list[Any] = []
        for name, call, kwargs in calls:
            self.metrics.rest.labels(name).inc()
            results.append(await call(**kwargs))
        balance, positions, orders, algos = results
        parsed = [p for p in (Position.from_ccxt(row) for row in positions) if p is not None]
        return Account(balance=Balance.from_ccxt(balance, self.asset),
                       positions=tuple(parsed),
                       orders=tuple(Order.from_ccxt(o) for o in [*orders, *algos]),
                       as_of_ms=now_ms())

    def store_snapshot(self, account: Account) -> None:
        at = account.as_of_ms
        self.writer.replace_account(account)
        self.sink.add(self.stream, Record(REC_EXCHANGE_BALANCE,
                                          dict(balance_record(account.balance, SNAPSHOT, at))),
                      kafka_key=account.balance.asset)
        current = {p.symbol: p for p in account.positions}
        for symbol in sorted(set(current) | set(self.positions)):
            record = position_record(symbol, current.get(symbol), SNAPSHOT, at)
            self.sink.add(self.stream, Record(REC_EXCHANGE_POSITION, dict(record)),
                          kafka_key=symbol)
        self.sink.flush()
        self.positions = current
        self.synced, self.synced_ms = True, at

    def handle(self, ev: Event) -> None:
        """One user-data event: state (when resynchronised or not) and its records."""
        change = account_change(ev, self.positions, self.asset)
        for rec_type, key, data in change.records:
            self.sink.add(self.stream, Record(rec_type, data), kafka_key=key)
        if change.records:
            self.metrics.events.labels(str(ev.get("e"))).inc()
        if not change.empty:
            self.writer.apply(balance=change.balance, positions=change.positions,
                              flat=change.flat, orders=change.orders)
            for p in change.positions:
                self.positions[p.symbol] = p
            for symbol in change.flat:
                self.positions.pop(symbol, None)
            at = event_ms(ev)
            if at:
                self.metrics.latency.labels("account").observe(max(0, now_ms() - at) / 1000)
