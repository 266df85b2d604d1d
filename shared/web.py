"""HTTP helpers for the services' Nameko ``@http`` entrypoints: JSON in, JSON out.

Every error answers ``{"error": "<what is wrong>", "reason": "<machine code>"}`` with a
4xx/5xx status; an unexpected exception is logged with its traceback and answers 500
without details.

API keys are checked in constant time on bytes (any Unicode input is safe), and failed
attempts are counted per client in Redis: past ``security.auth_failure_limit`` failures
in ``security.auth_failure_window_s`` the client is answered 429 for an exponentially
growing time, whatever key it sends, so guessing a key is slowed to a crawl.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

import redis
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from werkzeug.wrappers import Request, Response

from shared.records import dumps

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024

PROCESS_PEAK_RSS = Gauge("phoenix95_process_peak_rss_bytes", "Peak resident set size")


REASONS = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "body_too_large",
    415: "unsupported_media_type", 422: "invalid_field", 429: "too_many_requests",
    500: "internal_error", 502: "bad_gateway", 503: "unavailable", 504: "timeout",
}


class HttpError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def error_body(status: int, message: str, **extra: Any) -> dict[str, Any]:
    """The one error shape: ``{"error": message, "reason": code, ...extra}``."""
    return {"error": message, "reason": REASONS.get(status, f"http_{status}"), **extra}


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(payload), status=status, mimetype="application/json",
                    headers=headers)


Handler = Callable[..., Response | tuple[int, Any]]


def api(handler: Handler) -> Callable[..., Response]:
    """Turn a handler's result or :class:`HttpError` into a JSON response."""

    @functools.wraps(handler)
    def wrapper(self: Any, request: Request, **path: Any) -> Response:
        try:
            result = handler(self, request, **path)
        except HttpError as exc:
            headers = exc.extra.pop("headers", None)
            return json_response(exc.status, error_body(exc.status, exc.message, **exc.extra),
                                 headers=headers)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return json_response(500, error_body(500, "internal error"))
        if isinstance(result, Response):
            return result
        status, payload = result
        return json_response(status, payload)

    del wrapper.__wrapped__  # nameko checks the call against the wrapper's own signature
    return wrapper


def read_json_object(request: Request, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The body as a JSON object, whatever the Content-Type (TradingView sends text/plain)."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise HttpError(413, f"body larger than {max_bytes} bytes")
    raw = request.get_data(cache=False)
    if len(raw) > max_bytes:
        raise HttpError(413, f"body larger than {max_bytes} bytes")
    if not raw.strip():
        raise HttpError(400, "empty body: a JSON object is required")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise HttpError(400, f"malformed JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise HttpError(400, "body must be a JSON object")
    return body


def api_key_matches(given: str, keys: Iterable[str]) -> bool:
    """Constant-time membership of ``given`` in ``keys``; safe for any Unicode input.

    ``hmac.compare_digest`` raises TypeError on non-ASCII ``str``: compare UTF-8 bytes.
    """
    raw = given.encode("utf-8", "surrogatepass")
    ok = False
    for key in keys:
        # compare against every key so timing does not reveal which one matched
        ok |= hmac.compare_digest(raw, key.encode("utf-8", "surrogatepass"))
    return bool(given) and ok


class AuthGuard:
    """Failed API-key attempts per client, counted in Redis (shared by every replica).

    After ``limit`` failures inside ``window_s`` a client is locked out for
    ``2 ** (failures - limit)`` seconds (capped at ``max_lockout_s``); each failure
    extends the window, so a steady guesser waits longer and longer. A success costs no
    write. Redis trouble fails open: the key check itself still applies.
    """

    PREFIX = "phoenix95:authfail:"

    def __init__(self, client: redis.Redis, limit: int, window_s: int,
                 max_lockout_s: int = 900) -> None:
        self.redis = client
        self.limit = limit
        self.window_s = window_s
        self.max_lockout_s = max_lockout_s

    def _keys(self, who: str) -> tuple[str, str]:
        return self.PREFIX + "n:" + who, self.PREFIX + "lock:" + who

    def retry_after(self, who: str) -> int:
        """Seconds the client must still wait; 0 = it may try."""
        if self.limit <= 0:
            return 0
        try:
            ttl = int(self.redis.pttl(self._keys(who)[1]))
        except redis.RedisError as exc:
            log.warning("auth guard unavailable (%s): not slowing key guesses", exc)
            return 0
        return max(0, -(-ttl // 1000))

    def failed(self, who: str) -> int:
        """Count one failure; return the lockout it starts, in seconds (0 = none)."""
        if self.limit <= 0:
            return 0
        count_key, lock_key = self._keys(who)
        try:
            pipe = self.redis.pipeline()
            pipe.incr(count_key)
            pipe.expire(count_key, self.window_s)
            count = int(pipe.execute()[0])
            if count < self.limit:
                return 0
            lockout = min(self.max_lockout_s, 2 ** min(count - self.limit, 20))
            self.redis.set(lock_key, "1", ex=lockout)
            return lockout
        except redis.RedisError as exc:
            log.warning("auth guard unavailable (%s): not slowing key guesses", exc)
            return 0


_guard_lock = threading.Lock()
_default_guard: list[AuthGuard] = []


def default_guard() -> AuthGuard:
    """The process's guard, built from the settings on first use."""
    with _guard_lock:
        if not _default_guard:
            from shared.redis_conn import redis_client
            from shared.settings import ConfigError, get_settings

            try:
                settings = get_settings()
            except ConfigError:  # the process's own start-up check reports this
                return AuthGuard(redis.Redis(), 0, 1)
            sec = settings.security
            url = sec.auth_failure_redis_url or settings.redis_streams.url
            client = redis_client(settings.redis_streams.model_copy(update={"url": url}),
                                  socket_timeout=0.5, socket_connect_timeout=0.5)
            _default_guard.append(AuthGuard(client, sec.auth_failure_limit,
                                            sec.auth_failure_window_s,
                                            sec.auth_max_lockout_s))
        return _default_guard[0]


def client_id(request: Request) -> str:
    return str(request.remote_addr or "unknown")


def require_api_key(request: Request, keys: Iterable[str],
                    guard: AuthGuard | None = None) -> None:
    """Constant-time check of ``X-API-Key`` against every configured key, slowed per client."""
    guard = guard if guard is not None else default_guard()
    who = client_id(request)
    wait = guard.retry_after(who)
    if wait:
        raise HttpError(429, "too many failed API-key attempts; retry later",
                        retry_after_s=wait, headers={"Retry-After": str(wait)})
    if not api_key_matches(request.headers.get("X-API-Key", ""), keys):
        guard.failed(who)
        raise HttpError(401, "missing or invalid X-API-Key")


def query_params(request: Request, names: Iterable[str]) -> dict[str, str]:
    return {n: request.args[n] for n in names if n in request.args}


def peak_rss_bytes() -> int:
    try:
        import resource  # POSIX only; Windows reports 0
    except ImportError:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def metrics_response() -> Response:
    PROCESS_PEAK_RSS.set(peak_rss_bytes())
    return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)
