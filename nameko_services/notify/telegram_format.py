"""What the Telegram worker sends: outbox entries decoded into alerts, formatted, split to
Telegram's size and planned into messages (critical ones first and alone, a backlog of the
rest merged into digests). Pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from shared.records import Record

MAX_MESSAGE: Final = 4000  # Telegram allows 4096 (UTF-16 units); keep a margin for emoji
LEVEL_PREFIX: Final = {
    "info": "ℹ️ INFO",
    "warning": "⚠️ WARNING",
    "critical": "🚨 CRITICAL",
}


@dataclass(frozen=True)
class Alert:
    """One outbox entry."""

    entry_id: str
    level: str
    text: str
    ts: int = 0

    @property
    def critical(self) -> bool:
        return self.level == "critical"


def as_text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def parse_entry(entry_id: Any, fields: dict[Any, Any]) -> Alert:
    """Decode an outbox entry; a malformed one becomes a warning carrying its raw fields."""
    eid = as_text(entry_id)
    try:
        record = Record.from_stream_fields(fields)
        level = str(record.data.get("level", "info")).lower()
        text = str(record.data.get("text", "")).strip()
        if not text:
            text = f"(empty alert {eid})"
        return Alert(eid, level, text, record.ts)
    except (ValueError, TypeError, AttributeError):
        raw = {as_text(k): as_text(v) for k, v in fields.items()}
        return Alert(eid, "warning", f"(malformed outbox entry {eid}) {raw}")


def format_alert(alert: Alert) -> str:
    prefix = LEVEL_PREFIX.get(alert.level, f"🔔 {alert.level.upper()}")
    return f"{prefix}\n{alert.text}"


def split_text(text: str, limit: int = MAX_MESSAGE) -> list[str]:
    """Split ``text`` into Telegram-sized parts, preferring line breaks."""
    parts: list[str] = []
    while len(text) > limit:
        cut = text.rfind("\n", 0, limit)
        if cut < limit // 2:  # no line break in the second half: hard cut
            cut = limit
        parts.append(text[:cut])
        text = text[cut:].lstrip("\n")
    if text or not parts:
        parts.append(text)
    return parts


@dataclass
class Outgoing:
    """One Telegram message (maybe in several parts) covering one or more outbox entries."""

    parts: list[str]
    entry_ids: tuple[str, ...]
    critical: bool
    done: set[tuple[str, int]] = field(default_factory=set)  # (chat, part index) accepted


def plan_messages(alerts: Sequence[Alert], merge_from: int = 2,
                  limit: int = MAX_MESSAGE) -> list[Outgoing]:
    """Turn a batch of alerts into messages.

    Critical alerts come first, each in its own message. If ``merge_from`` or more
    non-critical alerts are queued (a backlog), they are merged in order into digest
    messages of at most ``limit`` characters; otherwise each is sent alone.
    """
    out = [Outgoing(split_text(format_alert(a), limit), (a.entry_id,), True)
           for a in alerts if a.critical]
    rest = [a for a in alerts if not a.critical]
    if len(rest) < merge_from:
        out += [Outgoing(split_text(format_alert(a), limit), (a.entry_id,), False) for a in rest]
        return out
    chunk: list[Alert] = []
    body_len = 0
    header_room = 40

    def flush() -> None:
        if not chunk:
            return
        if len(chunk) == 1:
            out.append(Outgoing(split_text(format_alert(chunk[0]), limit),
                                (chunk[0].entry_id,), False))
        else:
            header = f"📬 {len(chunk)} alerts (backlog merged)"
            body = "\n\n".join(format_alert(a) for a in chunk)
            out.append(Outgoing([f"{header}\n\n{body}"], tuple(a.entry_id for a in chunk),
                                False))
        chunk.clear()

    for alert in rest:
        size = len(format_alert(alert)) + 2
        if chunk and body_len + size + header_room > limit:
            flush()
            body_len = 0
        if size + header_room > limit:  # too big to merge: its own (split) message
            flush()
            body_len = 0
            out.append(Outgoing(split_text(format_alert(alert), limit), (alert.entry_id,),
                                False))
            continue
        chunk.append(alert)
        body_len += size
    flush()
    return out


def parse_chat_ids(value: str) -> list[str]:
    return [c.strip() for c in value.split(",") if c.strip()]
