"""Durable alert outbox: the notify service appends, the Telegram worker delivers.

Alerts are records (``type="alert"``, data ``{level, text}``) on the Redis stream
``names.ALERT_OUTBOX_STREAM``; the worker reads them through the consumer group
``names.TELEGRAM_GROUP`` and acknowledges each one only after Telegram accepted it, so an
alert survives worker crashes and Telegram outages.

The stream is kept near ``maxlen`` entries by :meth:`AlertOutbox.trim`: delivered entries
go first; only when undelivered alerts alone exceed it are the oldest non-critical ones
dropped (counted, logged). A critical alert is never trimmed before delivery. Alerts
Telegram refuses for good land in the dead-letter list ``names.TELEGRAM_DEAD_LETTERS_KEY``
(gauge ``phoenix95_telegram_dead_letters``, notify ``/health``).

Synchronous on purpose (the notify service is a Nameko/eventlet process).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final, Literal

import redis
from prometheus_client import Counter, Gauge

from shared import names
from shared.records import Record
from shared.redis_conn import redis_client
from shared.settings import Settings

log = logging.getLogger(__name__)

TELEGRAM_DEAD_LETTERS = Gauge(
    "phoenix95_telegram_dead_letters",
    "Alerts Telegram refused for good (bot blocked, chat not found), in the dead-letter list")
OUTBOX_DROPPED = Counter(
    "phoenix95_alert_outbox_dropped_total",
    "Undelivered non-critical alerts trimmed from a full outbox", ["level"])
DEAD_LETTERS_KEPT: Final = 1000

AlertLevel = Literal["info", "warning", "critical"]
LEVELS: Final[tuple[str, ...]] = ("info", "warning", "critical")
ALERT_TYPE: Final = "alert"


class AlertOutbox:
    """Typed facade over the outbox stream."""

    def __init__(self, client: redis.Redis, maxlen: int = 10000,
                 stream: str = names.ALERT_OUTBOX_STREAM,
                 dead_letters_key: str = names.TELEGRAM_DEAD_LETTERS_KEY) -> None:
        self._client = client
        self._maxlen = maxlen
        self.stream = stream
        self.dead_letters_key = dead_letters_key
        self._group_ready = False

    @classmethod
    def from_settings(cls, settings: Settings) -> AlertOutbox:
        client = redis_client(settings.redis_streams, socket_timeout=5.0,
                              socket_connect_timeout=5.0)
        return cls(client, maxlen=settings.redis_streams.maxlen)

    def ensure_group(self, group: str = names.TELEGRAM_GROUP) -> None:
        """Create the consumer group (and the stream) if missing; idempotent."""
        ensure_group(self._client, self.stream, group)

    def append(self, level: AlertLevel | str, text: str, signal_id: str = "") -> str:
        """Queue one alert for delivery; returns the stream entry id.

        The group is created first if missing, so an alert appended before any worker ever
        ran is still delivered (a group created later would start after it).
        """
        level = str(level).lower()
        if level not in LEVELS:
            raise ValueError(f"alert level must be one of {LEVELS}, not {level!r}")
        if not text or not text.strip():
            raise ValueError("alert text is empty")
        if not self._group_ready:
            self.ensure_group()
            self._group_ready = True
        record = Record(ALERT_TYPE, {"level": level, "text": text}, signal_id)
        # no MAXLEN here: it would trim undelivered (even critical) alerts; see trim()
        entry_id = self._client.xadd(self.stream, record.stream_fields())  # type: ignore[arg-type]
        if self._client.xlen(self.stream) > self._maxlen:
            self.trim()
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def trim(self, group: str = names.TELEGRAM_GROUP) -> int:
        """Delete the oldest entries down to 90 % of ``maxlen`` (so not on every append):
        delivered ones, else undelivered non-critical ones; never an undelivered critical.
        Returns how many were deleted."""
        excess = self._client.xlen(self.stream) - self._maxlen * 9 // 10
        delivered_below = self._delivered_boundary(group)
        doomed: list[str] = []
        start = "-"
        while excess > len(doomed):
            page = self._client.xrange(self.stream, min=start, count=500)
            if not page:
                break
            for entry_id, fields in page:
                eid = _text(entry_id)
                if _stream_id(eid) < delivered_below:
                    doomed.append(eid)
                else:
                    level = _level(fields or {})
                    if level == "critical":
                        continue
                    OUTBOX_DROPPED.labels(level).inc()
                    doomed.append(eid)
                if len(doomed) >= excess:
                    break
            start = "(" + _text(page[-1][0])
        if doomed:
            self._client.xdel(self.stream, *doomed)
        return len(doomed)

    def _delivered_boundary(self, group: str) -> tuple[int, int]:
        """Entries with a smaller id were delivered and acknowledged."""
        try:
            summary = self._client.xpending(self.stream, group)
            groups = self._client.xinfo_groups(self.stream)
        except redis.ResponseError:
            return (0, 0)
        if int(summary["pending"]):
            return _stream_id(_text(summary["min"]))
        for info in groups:
            if _text(info.get("name")) == group:
                ms, seq = _stream_id(_text(info.get("last-delivered-id") or "0-0"))
                return (ms, seq + 1)
        return (0, 0)

    def dead_letter_count(self) -> int:
        """Alerts Telegram refused for good; also sets ``phoenix95_telegram_dead_letters``."""
        count = int(self._client.llen(self.dead_letters_key))
        TELEGRAM_DEAD_LETTERS.set(count)
        return count

    def dead_letters(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest dead letters (chat, level, text, error, at)."""
        raw = self._client.lrange(self.dead_letters_key, 0, limit - 1)
        return [json.loads(item) for item in raw]

    def pending_count(self, group: str = names.TELEGRAM_GROUP) -> int:
        """Alerts delivered to a worker but not yet acknowledged."""
        try:
            info = self._client.xpending(self.stream, group)
        except redis.ResponseError:
            return 0
        return int(info["pending"])

    def backlog(self, group: str = names.TELEGRAM_GROUP) -> int | None:
        """Entries not yet read by the group (Redis >= 7 reports ``lag``), else None."""
        try:
            groups = self._client.xinfo_groups(self.stream)
        except redis.ResponseError:
            return None
        for info in groups:
            name = info.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == group:
                lag = info.get("lag")
                return int(lag) if lag is not None else None
        return None


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """XGROUP CREATE <stream> <group> 0 MKSTREAM (from the start), ignoring BUSYGROUP."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _level(fields: dict[Any, Any]) -> str:
    try:
        return str(Record.from_stream_fields(fields).data.get("level", "info")).lower()
    except (ValueError, TypeError, AttributeError):
        return "warning"
