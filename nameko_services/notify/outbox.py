"""Durable alert outbox: the notify service appends, the Telegram worker delivers.

Alerts are records (``type="alert"``, data ``{level, text}``) on the Redis stream
``names.ALERT_OUTBOX_STREAM``; the worker reads them through the consumer group
``names.TELEGRAM_GROUP`` and acknowledges each one only after Telegram accepted it, so an
alert survives worker crashes and Telegram outages.

Synchronous on purpose (the notify service is a Nameko/eventlet process).
"""

from __future__ import annotations

from typing import Final, Literal

import redis

from shared import names
from shared.records import Record
from shared.settings import Settings

AlertLevel = Literal["info", "warning", "critical"]
LEVELS: Final[tuple[str, ...]] = ("info", "warning", "critical")
ALERT_TYPE: Final = "alert"


class AlertOutbox:
    """Typed facade over the outbox stream."""

    def __init__(self, client: redis.Redis, maxlen: int = 10000,
                 stream: str = names.ALERT_OUTBOX_STREAM) -> None:
        self._client = client
        self._maxlen = maxlen
        self.stream = stream
        self._group_ready = False

    @classmethod
    def from_settings(cls, settings: Settings) -> AlertOutbox:
        client = redis.Redis.from_url(settings.redis_streams.url, socket_timeout=5.0,
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
        entry_id = self._client.xadd(self.stream, record.stream_fields(),  # type: ignore[arg-type]
                                     maxlen=self._maxlen, approximate=True)
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

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
