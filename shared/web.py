"""HTTP helpers for the services' Nameko ``@http`` entrypoints: JSON in, JSON out.

Every error answers ``{"error": "<what is wrong>"}`` with a 4xx/5xx status; an
unexpected exception is logged with its traceback and answers 500 without details.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from werkzeug.wrappers import Request, Response

from shared.records import dumps

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024

PROCESS_PEAK_RSS = Gauge("phoenix95_process_peak_rss_bytes", "Peak resident set size")


class HttpError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


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
            return json_response(exc.status, {"error": exc.message, **exc.extra})
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return json_response(500, {"error": "internal error"})
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


def require_api_key(request: Request, keys: Iterable[str]) -> None:
    """Constant-time check of ``X-API-Key`` against every configured key."""
    given = request.headers.get("X-API-Key", "")
    ok = False
    for key in keys:
        # compare against every key so timing does not reveal which one matched
        ok |= hmac.compare_digest(given.encode(), key.encode())
    if not given or not ok:
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
