"""OpenAPI 3.0 documents of the services' HTTP APIs, served at ``GET /openapi.json``.

One static document per service, written by hand next to nothing else so a reviewer sees
the whole surface at once. Every error answers ``{"error", "reason"}`` (shared.web). The
request schemas are never stricter than the handlers: the fuzzer's "invalid" examples
must really be invalid for the service (tests/e2e/test_openapi_fuzz.py sends only those
to the operations that change state).
"""

from __future__ import annotations

import json
from typing import Any, Final

from werkzeug.wrappers import Response

from shared import names

JSON: Final = "application/json"
VERSION: Final = "0.1.0"

ERROR: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["error", "reason"],
    "properties": {"error": {"type": "string"}, "reason": {"type": "string"},
                   "field": {"type": "string"}},
}
OBJECT: Final[dict[str, Any]] = {"type": "object"}
HEALTH: Final[dict[str, Any]] = {
    "type": "object", "required": ["status", "service"],
    "properties": {"status": {"type": "string", "enum": ["ok", "degraded"]},
                   "service": {"type": "string"}},
}
API_KEY: Final[list[dict[str, list[str]]]] = [{"apiKey": []}]
# a number the services read with Decimal(str(value)); strings too (exact decimals)
NUMBER_LIKE: Final[dict[str, Any]] = {"oneOf": [{"type": "number"}, {"type": "string"}]}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "malformed request", 401: "missing or invalid credentials",
            403: "source not allowed", 413: "body too large", 422: "a field is invalid",
            423: "trading is paused or halted", 429: "too many requests or failed keys",
            503: "a dependency is unavailable, retry later"}
    return {str(c): _json(ERROR, text[c]) for c in codes}


def _op(summary: str, ok: tuple[int, dict[str, Any]], errors: tuple[int, ...],
        body: dict[str, Any] | None = None, secured: bool = True,
        params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    status, schema = ok
    op: dict[str, Any] = {"summary": summary,
                          "responses": {str(status): _json(schema, summary), **_errors(*errors)}}
    if secured:
        op["security"] = API_KEY
        op["responses"].update(_errors(401, 429))
    if body is not None:
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
        op["responses"].update(_errors(400, 413))
    if params:
        op["parameters"] = params
    return op


def _common(service: str) -> dict[str, Any]:
    return {
        "/health": {"get": _op(f"{service} liveness and its checks", (200, HEALTH), (),
                               secured=False)},
        "/metrics": {"get": {"summary": "Prometheus metrics (internal network only)",
                             "responses": {"200": {"description": "text exposition",
                                                   "content": {"text/plain": {"schema": {
                                                       "type": "string"}}}}}}},
        "/openapi.json": {"get": _op("this document", (200, OBJECT), (), secured=False)},
        "/ready": {"get": {"summary": f"{service} readiness (its dependencies reachable)",
                           "responses": {"200": _json(OBJECT, "ready"),
                                         "503": _json(OBJECT, "not ready")}}},
    }


ALERT_BODY: Final[dict[str, Any]] = {
    "type": "object", "required": ["ticker", "action"],
    "properties": {
        "secret": {"type": "string"},
        "ticker": {"type": "string", "minLength": 1, "maxLength": 64},
        "action": {"type": "string"},
        "price": NUMBER_LIKE, "confidence": NUMBER_LIKE,
        "strategy": {"type": "string", "maxLength": 64},
        "interval": {"type": "string", "maxLength": 16},
        "id": {"type": "string", "maxLength": 128},
        "time": {"oneOf": [{"type": "string"}, {"type": "number"}]},
    },
}
TRADE_BODY: Final[dict[str, Any]] = {
    "type": "object", "required": ["symbol", "side", "quantity"],
    "properties": {"symbol": {"type": "string"}, "side": {"type": "string"},
                   "quantity": NUMBER_LIKE,
                   "id": {"description": "idempotency id (any value; str() of it is used)"}},
}
CLOSE_BODY: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"symbol": {"type": "string"}, "all": {"type": "boolean"}},
}
UPDATE_BODY: Final[dict[str, Any]] = {
    "type": "object", "required": ["state"],
    "properties": {"state": {"type": "string"}, "reason": {"type": "string"}},
}
MESSAGE_BODY: Final[dict[str, Any]] = {
    "type": "object", "required": ["message"],
    "properties": {"message": {"type": "string", "minLength": 1},
                   "level": {"type": "string"}},
}
ALERTMANAGER_BODY: Final[dict[str, Any]] = {
    "type": "object", "required": ["alerts"],
    "properties": {"version": {"type": "string"}, "status": {"type": "string"},
                   "alerts": {"type": "array", "items": {"type": "object"}}},
}
LIQUIDATION_PARAMS: Final[list[dict[str, Any]]] = [
    {"name": n, "in": "query", "required": req, "schema": {"type": "string"}}
    for n, req in (("symbol", True), ("side", True), ("entry_price", True),
                   ("quantity", True), ("leverage", False), ("wallet_balance", False))
]


def _paths(service: str) -> dict[str, Any]:
    paths = _common(service)
    if service == names.BRAIN:
        paths["/webhook"] = {"post": _op(
            "TradingView alert: authenticated by its secret, queued durably",
            (202, OBJECT), (401, 403, 422, 423, 429, 503), body=ALERT_BODY,
            secured=False)}
        paths["/webhook"]["post"]["responses"]["200"] = _json(OBJECT, "a duplicate alert")
        paths["/analyze"] = {"post": _op("dry-run analysis of an alert (no trade)",
                                         (200, OBJECT), (422, 503), body=ALERT_BODY)}
    elif service == names.RISK:
        paths["/check"] = {"post": _op("three-stage pre-trade check of a trade intent",
                                       (200, OBJECT), (422, 503), body=OBJECT)}
        paths["/status"] = {"get": _op("state, equity, exposure, limits", (200, OBJECT),
                                       (503,))}
        paths["/update"] = {"post": _op("set the trading state", (200, OBJECT), (422,),
                                        body=UPDATE_BODY)}
        paths["/liquidation"] = {"get": _op("liquidation price for the inputs", (200, OBJECT),
                                            (400, 422), params=LIQUIDATION_PARAMS)}
    elif service == names.EXECUTE:
        paths["/trade"] = {"post": _op("manual trade: checked by risk, then queued",
                                       (202, OBJECT), (422, 503), body=TRADE_BODY)}
        paths["/positions"] = {"get": _op("open positions", (200, {"type": "array"}), (503,))}
        paths["/close"] = {"post": _op("close one position or all",
                                       (200, {"oneOf": [OBJECT, {"type": "array"}]}),
                                       (422, 503), body=CLOSE_BODY)}
    elif service == names.NOTIFY:
        paths["/alert"] = {"post": _op("send an alert to Telegram", (202, OBJECT), (422,),
                                       body=MESSAGE_BODY)}
        paths["/alertmanager"] = {"post": _op(
            "Alertmanager webhook (version 4; Authorization: Bearer <API key> or X-API-Key)",
            (202, OBJECT), (422,), body=ALERTMANAGER_BODY)}
        paths["/dashboard"] = {"get": {"summary": "redirect to the Streamlit dashboard",
                                       "responses": {"302": {"description": "redirect"}}}}
    elif service == names.FEED:
        paths["/health"]["get"]["responses"]["503"] = _json(OBJECT, "unhealthy")
        paths["/health"]["get"]["responses"]["200"] = _json(OBJECT, "healthy")
    return paths


def document(service: str) -> dict[str, Any]:
    """The OpenAPI 3.0 document of one service (brain, risk, execute, notify, feed)."""
    return {
        "openapi": "3.0.3",
        "info": {"title": f"Phoenix 95 {service}", "version": VERSION},
        "paths": _paths(service),
        "components": {"securitySchemes": {
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
    }


def openapi_response(service: str) -> Response:
    return Response(json.dumps(document(service)), status=200, mimetype=JSON)
