"""The load of ``scripts/chaos``: a burst of TradingView alerts, and a recorder of outcomes.

Alerts have unique ids and a strategy of their own per run; three in four have confidence 0.8 (they
trade, one position per symbol, the rest of a symbol's alerts are refused by risk with
``position_already_open``), the others 0.3 (refused by brain). An alert whose POST fails
(brain killed) is sent again with the same id, as the brain's idempotency makes safe.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from shared.names import RISK_STREAM, SIGNAL_STREAM, TRADE_STREAM
from shared.records import Record
from shared.settings import Settings

SEND_ATTEMPTS_S = 60.0  # an alert is re-sent (same id) for this long while brain is away


@dataclass
class Sent:
    alert_id: str
    symbol: str
    side: str
    confidence: float
    signal_id: str | None = None  # set once brain answered 202 (or 200 duplicate)
    http: list[str] = field(default_factory=list)  # every answer, for the report


def make_alert(settings: Settings, symbol: str, side: str, confidence: float, strategy: str,
               alert_id: str) -> dict[str, Any]:
    return {"secret": settings.security.webhook_secret.get_secret_value(),
            "ticker": f"BINANCE:{symbol}.P", "action": side, "confidence": confidence,
            "strategy": strategy, "interval": "15", "id": alert_id,
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def post_alert(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def send(settings: Settings, sent: Sent, strategy: str) -> None:
    url = settings.services.url_of("brain") + "/webhook"
    body = make_alert(settings, sent.symbol, sent.side, sent.confidence, strategy,
                      sent.alert_id)
    deadline = time.monotonic() + SEND_ATTEMPTS_S
    while time.monotonic() < deadline:
        try:
            status, answer = post_alert(url, body)
        except (OSError, ValueError) as exc:
            sent.http.append(f"error {type(exc).__name__}")
            time.sleep(0.5)
            continue
        sent.http.append(str(status))
        if status in (200, 202) and answer.get("signal_id"):
            sent.signal_id = str(answer["signal_id"])
            return
        if status < 500:
            return  # refused at the door: not accepted, nothing is owed
        time.sleep(0.5)


class Burst:
    """``count`` alerts over ``symbols`` spread over ``seconds``, sent from a thread."""

    def __init__(self, settings: Settings, symbols: list[str], count: int, seconds: float,
                 rng: random.Random) -> None:
        self.settings = settings
        self.strategy = f"chaos-{uuid.uuid4().hex[:8]}"
        self.seconds = seconds
        self.sent: list[Sent] = []
        for i in range(count):
            weak = i % 4 == 3  # one in four is refused by brain (low confidence)
            # symbol after symbol: each symbol's first (trading) alert comes at another
            # moment of the burst, so a fault at a random moment meets a trade in flight
            symbol = symbols[i * len(symbols) // count]
            self.sent.append(Sent(f"chaos-{uuid.uuid4().hex}", symbol,
                                  rng.choice(("buy", "sell")), 0.3 if weak else 0.8))
        self._thread = threading.Thread(target=self._run, name="chaos-burst", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        gap = self.seconds / max(1, len(self.sent))
        senders = []
        for sent in self.sent:
            t = threading.Thread(target=send, args=(self.settings, sent, self.strategy),
                                 daemon=True)
            t.start()
            senders.append(t)
            time.sleep(gap)
        for t in senders:
            t.join()

    def accepted(self) -> list[Sent]:
        return [s for s in self.sent if s.signal_id]


def _newer(last: str, entry_id: str) -> bool:
    """Stream ids compare as (ms, seq), not as strings."""
    a, b = last.split("-"), entry_id.split("-")
    return (int(b[0]), int(b[1])) > (int(a[0]), int(a[1] if len(a) > 1 else 0))


class Recorder:
    """Reads signal/risk/trade stream records while the run lasts, so a Redis restart that
    loses the streams does not lose what was already written."""

    STREAMS = (SIGNAL_STREAM, RISK_STREAM, TRADE_STREAM)

    def __init__(self, url: str, client: redis.Redis | None = None) -> None:
        # ``client``: one made by shared/redis_conn (through Sentinel in the HA lab)
        self.client = client or redis.Redis.from_url(url, decode_responses=True,
                                                     socket_timeout=5)
        self.records: dict[tuple[str, str], Record] = {}
        self._last = {s: "$" for s in self.STREAMS}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="chaos-recorder", daemon=True)

    def start(self) -> None:
        for stream in self.STREAMS:  # from now on only
            try:
                last = self.client.xrevrange(stream, count=1)
                self._last[stream] = str(last[0][0]) if last else "0-0"
            except redis.RedisError:
                self._last[stream] = "0-0"
        self._thread.start()

    def stop(self) -> None:
        self.poll()
        self._stop.set()
        self._thread.join(timeout=5)
        self.client.close()

    def _run(self) -> None:
        # a blocking XREAD is answered as the record is written: Redis keeps no data over a
        # restart, so a record written 100 ms before the shutdown exists only this long (a
        # 0.3 s poll missed risk's rejection of a signal that way in redis-restart)
        reader = redis.Redis(connection_pool=self.client.connection_pool)
        while not self._stop.is_set():
            try:
                with self._lock:
                    last: dict[Any, Any] = dict(self._last)
                reply: Any = reader.xread(last, count=5000, block=200) or []
            except redis.RedisError:
                self._stop.wait(0.1)  # Redis down (restarting): try again at once after
                continue
            self._keep(list(reply.items()) if isinstance(reply, dict) else reply)

    def poll(self) -> None:
        for stream in self.STREAMS:
            try:
                entries: list[Any] = self.client.xrange(
                    stream, min=f"({self._last[stream]}", count=5000) or []
            except redis.RedisError:
                continue
            self._keep([(stream, entries)])

    def _keep(self, reply: list[Any]) -> None:
        with self._lock:
            for stream, entries in reply:
                for entry_id, fields in entries:
                    if _newer(self._last[stream], str(entry_id)):
                        self._last[stream] = str(entry_id)
                    try:
                        self.records[(stream, str(entry_id))] = Record.from_stream_fields(fields)
                    except (ValueError, KeyError):
                        continue

    def of(self, signal_ids: set[str]) -> dict[str, list[tuple[str, Record]]]:
        with self._lock:
            found: dict[str, list[tuple[str, Record]]] = {s: [] for s in signal_ids}
            for (stream, _), rec in sorted(self.records.items(), key=lambda kv: kv[0][1]):
                if rec.signal_id in found:
                    found[rec.signal_id].append((stream, rec))
            return found
