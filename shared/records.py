"""Wire format of telemetry records on Redis Streams and Kafka.

A Redis stream entry has four string fields: ``type``, ``signal_id`` (may be empty),
``ts`` (epoch milliseconds) and ``data`` (a JSON object). The Kafka record value is the
same four keys as one JSON object, keyed by ``signal_id`` (or the symbol) so records of
one signal keep their order inside a partition.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(value: Any) -> str:
    return json.dumps(value, default=_default, separators=(",", ":"))


@dataclass(frozen=True)
class Record:
    type: str
    data: dict[str, Any]
    signal_id: str = ""
    ts: int = 0

    def stamped(self) -> Record:
        return self if self.ts else Record(self.type, self.data, self.signal_id, now_ms())

    def stream_fields(self) -> dict[str, str]:
        rec = self.stamped()
        return {
            "type": rec.type,
            "signal_id": rec.signal_id,
            "ts": str(rec.ts),
            "data": dumps(rec.data),
        }

    def kafka_value(self) -> bytes:
        rec = self.stamped()
        return dumps(
            {"type": rec.type, "signal_id": rec.signal_id, "ts": rec.ts, "data": rec.data}
        ).encode()

    @classmethod
    def from_stream_fields(cls, fields: dict[Any, Any]) -> Record:
        def text(key: str) -> str:
            raw = fields.get(key, fields.get(key.encode(), b""))
            return raw.decode() if isinstance(raw, bytes) else str(raw)

        return cls(text("type"), json.loads(text("data") or "{}"), text("signal_id"),
                   int(text("ts") or 0))

    @classmethod
    def from_kafka_value(cls, value: bytes) -> Record:
        obj = json.loads(value)
        return cls(obj["type"], obj.get("data", {}), obj.get("signal_id", ""), int(obj["ts"]))


def now_ms() -> int:
    return int(time.time() * 1000)
