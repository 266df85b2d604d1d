"""TradingView alert intake: authenticate, validate, normalise, key for idempotency."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import uuid
from collections.abc import Collection
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from werkzeug.wrappers import Request

from shared.models import Signal
from shared.web import HttpError, read_json_object

_PREFIX = re.compile(r"^[A-Z0-9_]+:")  # BINANCE:BTCUSDT.P
_SUFFIXES = (".P", "PERP", ".PERP", "_PERP")
_ACTIONS = {"buy": "LONG", "long": "LONG", "sell": "SHORT", "short": "SHORT", "close": None}
# no USD-M contract trades outside this; past it Decimal arithmetic downstream overflows
# (1e9999999 is a finite Decimal) and the signal would be dead-lettered instead of refused
_PRICE_MIN = Decimal("1e-12")
_PRICE_MAX = Decimal("1e12")


def normalise_ticker(raw: str) -> str:
    """``BINANCE:BTCUSDT.P``, ``BTCUSDTPERP``, ``BTC/USDT``, ``btc/usdt:usdt`` -> ``BTCUSDT``."""
    ticker = raw.strip().upper()
    ticker = _PREFIX.sub("", ticker)
    ticker = ticker.split(":", 1)[0] if "/" in ticker else ticker
    for suffix in _SUFFIXES:
        if ticker.endswith(suffix):
            ticker = ticker[: -len(suffix)]
            break
    return ticker.replace("/", "").replace("-", "").replace("_", "")


def parse_alert_time(value: Any) -> datetime | None:
    """TradingView's ``{{timenow}}`` (ISO-8601, UTC) or epoch seconds/milliseconds."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if value > 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError("time is not a representable epoch timestamp") from None
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit() and len(text) < 20:
            return parse_alert_time(int(text))
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise ValueError("time must be ISO-8601 or epoch seconds/milliseconds")


class TradingViewAlert(BaseModel):
    """The body of a TradingView webhook. Extra template fields are allowed and ignored."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    ticker: str = Field(min_length=1, max_length=64)
    action: Literal["buy", "sell", "long", "short", "close"]
    price: Decimal | None = Field(default=None, gt=0)
    confidence: float = Field(default=0.5, ge=0.0, le=1.0)
    strategy: str = Field(default="default", max_length=64)
    interval: str = Field(default="", max_length=16)
    id: str | None = Field(default=None, max_length=128)
    time: datetime | None = None

    @field_validator("action", mode="before")
    @classmethod
    def _lower_action(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("time", mode="before")
    @classmethod
    def _parse_time(cls, value: Any) -> datetime | None:
        return parse_alert_time(value)

    @field_validator("price", mode="before")
    @classmethod
    def _price_not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("price must be a number")
        return value

    @field_validator("price")
    @classmethod
    def _price_in_range(cls, value: Decimal | None) -> Decimal | None:
        if value is not None and not _PRICE_MIN <= value < _PRICE_MAX:
            raise ValueError(f"price must be between {_PRICE_MIN} and {_PRICE_MAX}")
        return value

    @field_validator("ticker", "strategy", "interval", "id")
    @classmethod
    def _encodable(cls, value: str | None) -> str | None:
        # a lone surrogate ("\ud800" in JSON) is valid JSON but not text: it cannot be
        # hashed, stored in Redis or published, so it is refused here
        if value is not None and not _is_utf8(value):
            raise ValueError("must be valid UTF-8 text")
        return value


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_body(request: Request) -> dict[str, Any]:
    """The webhook body as a JSON object (any Content-Type), at most 8 KiB."""
    try:
        return read_json_object(request)
    except RecursionError:
        raise HttpError(400, "malformed JSON: nested too deeply") from None


def check_secret(body: dict[str, Any], expected: str) -> None:
    given = body.get("secret")
    # surrogatepass: a lone surrogate is a wrong secret (401), not an encoding crash (500)
    if not isinstance(given, str) or not hmac.compare_digest(
            given.encode("utf-8", "surrogatepass"), expected.encode()):
        raise HttpError(401, "invalid or missing secret")


def idempotency_key(alert: TradingViewAlert, symbol: str) -> str:
    """The alert's ``id`` if present, else a hash of what makes an alert unique."""
    if alert.id:
        return f"id:{alert.id}"
    basis = "|".join(
        [symbol, alert.action, alert.interval, alert.strategy,
         alert.time.isoformat() if alert.time else ""]
    )
    return "h:" + hashlib.sha256(basis.encode()).hexdigest()[:32]


def _describe(exc: ValidationError) -> tuple[str, str, int]:
    """(field, message, status): a missing field is a malformed body (400), a bad value 422."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "body"
    return field, f"{field}: {err['msg']}", 400 if err["type"] == "missing" else 422


def check_fresh(alert_time: datetime | None, now: datetime, max_age_s: float,
                max_skew_s: float) -> None:
    """An alert older than ``max_age_s`` (a late retry, a replay) or from further in the
    future than the allowed clock skew is refused with reason ``stale``."""
    if alert_time is None:
        return
    age = (now - alert_time).total_seconds()
    if age > max_age_s:
        raise HttpError(422, f"time: alert is {age:.0f}s old (max {max_age_s:.0f}s)",
                        field="time", reason="stale")
    if -age > max_skew_s:
        raise HttpError(422, f"time: alert is {-age:.0f}s in the future "
                        f"(max clock skew {max_skew_s:.0f}s)", field="time", reason="stale")


def client_address(remote_addr: str | None, forwarded_for: str | None,
                   trusted_proxies: Collection[str]) -> str:
    """The address the request came from.

    ``X-Forwarded-For`` is believed only when the direct peer is a configured proxy, and
    then only up to the first hop that is not itself a trusted proxy (read from the
    right, since a client can prepend anything it likes).
    """
    peer = (remote_addr or "").strip() or "unknown"
    if not forwarded_for or not _trusted(peer, trusted_proxies):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted_proxies):
            return _valid_ip(hop) or peer
    return peer


def _trusted(address: str, trusted_proxies: Collection[str]) -> bool:
    """``address`` is one of the proxies: an address listed, or inside a listed network
    (k8s: the ingress controller's pod CIDR, its pods' addresses change)."""
    if address in trusted_proxies:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any("/" in entry and ip in ipaddress.ip_network(entry, strict=False)
               for entry in trusted_proxies)


def _valid_ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def check_source(client: str, allowlist: Collection[str]) -> None:
    """Refuse a source outside TradingView's published webhook addresses (when enabled)."""
    if client not in allowlist:
        raise HttpError(403, "source address not allowed", reason="forbidden_source")


def parse_alert(
    body: dict[str, Any], secret: str, allowed_symbols: tuple[str, ...],
    now: datetime | None = None, *, max_age_s: float | None = None, max_skew_s: float = 0.0,
) -> Signal:
    """Authenticate and validate a webhook body; raise :class:`HttpError` naming the problem.

    ``max_age_s`` enables the freshness check on the alert's ``time`` (the webhook sets
    it from ``security.max_alert_age_seconds``; RPC and dry-run analysis do not)."""
    check_secret(body, secret)
    return to_signal(body, allowed_symbols, now, max_age_s=max_age_s, max_skew_s=max_skew_s)


def to_signal(
    body: dict[str, Any], allowed_symbols: tuple[str, ...], now: datetime | None = None, *,
    max_age_s: float | None = None, max_skew_s: float = 0.0,
) -> Signal:
    """Validate an authenticated webhook body (see :func:`parse_alert`)."""
    try:
        alert = TradingViewAlert.model_validate({k: v for k, v in body.items() if k != "secret"})
    except ValidationError as exc:
        field, message, status = _describe(exc)
        raise HttpError(status, message, field=field) from None
    now = now or datetime.now(UTC)
    if max_age_s is not None:
        check_fresh(alert.time, now, max_age_s, max_skew_s)
    symbol = normalise_ticker(alert.ticker)
    if symbol not in allowed_symbols:
        raise HttpError(422, f"ticker: symbol {symbol} is not traded "
                        f"(allowed: {', '.join(allowed_symbols)})", field="ticker",
                        reason="symbol_not_allowed")
    return Signal(
        signal_id=uuid.uuid4().hex,
        idempotency_key=idempotency_key(alert, symbol),
        symbol=symbol,
        action=alert.action,
        side=_ACTIONS[alert.action],
        price=alert.price,
        confidence=alert.confidence,
        strategy=alert.strategy,
        interval=alert.interval,
        alert_time=alert.time,
        received_at=now,
    )
