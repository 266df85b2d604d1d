"""HTTP layer: Binance USD-M paths, HMAC signing, parameter parsing, JSON errors.

A WSGI app (werkzeug) with no framework, so the request/response contract stays visible:
every rejection is ``{"code": -NNNN, "msg": ...}`` because ccxt maps errors by code first
and falls back to a *network* error for a bare HTTP 400.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from werkzeug.wrappers import Request, Response

from . import views
from .engine import STOP_TYPES, MatchingEngine, now_ms, spec_of
from .faults import FaultInjector, FaultSpec
from .limiter import WeightLimiter, request_weight
from .listenkeys import ListenKeys
from .market import INTERVAL_MS, SYMBOLS, Market
from .models import ApiError

log = logging.getLogger(__name__)

JsonBody = dict[str, Any] | list[Any]


class Params:
    """Typed access to the merged query/body parameters, raising Binance's errors."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.raw = dict(pairs)

    def opt(self, name: str) -> str | None:
        value = self.raw.get(name)
        return value if value not in (None, "") else None

    def req(self, name: str) -> str:
        value = self.opt(name)
        if value is None:
            raise ApiError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, "
                                  "or malformed.")
        return value

    def symbol(self) -> str:
        symbol = self.req("symbol").upper()
        spec_of(symbol)
        return symbol

    def decimal(self, name: str) -> Decimal | None:
        value = self.opt(name)
        if value is None:
            return None
        try:
            dec = Decimal(value)
        except InvalidOperation:
            raise ApiError(-1130, f"Data sent for parameter '{name}' is not valid.") from None
        if not dec.is_finite():
            raise ApiError(-1130, f"Data sent for parameter '{name}' is not valid.")
        return dec

    def int(self, name: str) -> int | None:
        value = self.opt(name)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise ApiError(-1130, f"Data sent for parameter '{name}' is not valid.") from None

    def bool(self, name: str) -> bool:
        value = self.opt(name)
        if value is None or value.lower() == "false":
            return False
        if value.lower() == "true":
            return True
        raise ApiError(-1130, f"Data sent for parameter '{name}' is not valid.")


Handler = Callable[[Params], JsonBody]
AdminHook = Callable[[], JsonBody]
# Binance's endpoint security types: NONE, USER_STREAM (API key only), SIGNED (key + HMAC)
NONE, USER_STREAM, SIGNED = "NONE", "USER_STREAM", "SIGNED"
ADMIN_PATHS = ("/paper/state", "/paper/reset", "/paper/price", "/paper/faults", "/paper/orders")


class PaperApi:
    """Routes ``(method, path)`` to handlers; ``signed`` routes need key + HMAC + timestamp."""

    def __init__(self, engine: MatchingEngine, market: Market, api_key: str, api_secret: str,
                 limiter: WeightLimiter | None = None, listen_keys: ListenKeys | None = None,
                 admin_hooks: dict[tuple[str, str], AdminHook] | None = None,
                 faults: FaultInjector | None = None) -> None:
        self.engine = engine
        self.faults = faults or FaultInjector()
        self.market = market
        self.limiter = limiter
        self.listen_keys = listen_keys or ListenKeys(3600.0)
        self.admin_hooks = dict(admin_hooks or {})
        weight_limit = limiter.limit if limiter is not None else 2400
        self.api_key = api_key
        self.secret = api_secret.encode()
        self.routes: dict[tuple[str, str], tuple[Handler, str]] = {}
        public: dict[tuple[str, str], Handler] = {
            ("GET", "/fapi/v1/ping"): lambda p: {},
            ("GET", "/fapi/v1/time"): lambda p: {"serverTime": now_ms()},
            ("GET", "/fapi/v1/exchangeInfo"): lambda p: views.exchange_info(
                now_ms(), weight_limit),
            ("GET", "/fapi/v1/ticker/24hr"): self.ticker,
            ("GET", "/fapi/v1/klines"): self.klines,
            ("GET", "/fapi/v1/premiumIndex"): self.premium_index,
        }
        signed: dict[tuple[str, str], Handler] = {
            ("GET", "/fapi/v3/account"): lambda p: views.account(engine),
            ("GET", "/fapi/v2/account"): lambda p: views.account(engine),
            ("GET", "/fapi/v2/balance"): lambda p: views.balance(engine),
            ("GET", "/fapi/v3/balance"): lambda p: views.balance(engine),
            ("POST", "/fapi/v1/leverage"): lambda p: engine.set_leverage(
                p.symbol(), p.int("leverage") or 0),
            ("POST", "/fapi/v1/marginType"): lambda p: engine.set_margin_type(
                p.symbol(), p.req("marginType").upper()),
            ("GET", "/fapi/v1/positionSide/dual"): lambda p: {"dualSidePosition": False},
            ("POST", "/fapi/v1/positionSide/dual"): self.set_dual,
            ("GET", "/fapi/v1/multiAssetsMargin"): lambda p: {"multiAssetsMargin": False},
            ("POST", "/fapi/v1/order"): self.new_order,
            ("GET", "/fapi/v1/order"): self.get_order,
            ("DELETE", "/fapi/v1/order"): self.cancel_order,
            ("GET", "/fapi/v1/openOrders"): lambda p: [],  # MARKET orders never rest
            ("POST", "/fapi/v1/algoOrder"): self.new_algo,
            ("GET", "/fapi/v1/algoOrder"): self.get_algo,
            ("DELETE", "/fapi/v1/algoOrder"): self.cancel_algo,
            ("GET", "/fapi/v1/openAlgoOrders"): self.open_algos,
            ("GET", "/fapi/v3/positionRisk"): self.position_risk,
            ("GET", "/fapi/v2/positionRisk"): self.position_risk,
            ("GET", "/fapi/v1/leverageBracket"): self.leverage_bracket,
            ("GET", "/fapi/v1/userTrades"): self.user_trades,
            ("GET", "/fapi/v1/symbolConfig"): lambda p: views.symbol_config(
                engine, p.symbol() if p.opt("symbol") else None),
            ("GET", "/fapi/v1/forceOrders"): lambda p: views.force_orders(
                engine, p.symbol() if p.opt("symbol") else None, p.opt("autoCloseType"),
                p.int("startTime"), p.int("endTime"), min(p.int("limit") or 50, 100)),
        }
        keys = self.listen_keys
        user_stream: dict[tuple[str, str], Handler] = {
            ("POST", "/fapi/v1/listenKey"): lambda p: {"listenKey": keys.create()},
            ("PUT", "/fapi/v1/listenKey"): lambda p: {
                "listenKey": keys.keepalive(p.opt("listenKey"))},
            ("DELETE", "/fapi/v1/listenKey"): self.close_listen_key,
        }
        for table, security in ((public, NONE), (user_stream, USER_STREAM), (signed, SIGNED)):
            for key, handler in table.items():
                self.routes[key] = (handler, security)

    def route_paths(self) -> set[str]:
        """Every path this app answers (the metrics label set)."""
        return ({p for _, p in self.routes} | {p for _, p in self.admin_hooks}
                | set(ADMIN_PATHS) | {"/health"})

    # --- WSGI ----------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        headers: dict[str, str] = {}
        try:
            self.check_weight(request, headers)
            status, body = self.dispatch(request)
        except ApiError as exc:
            status, body = exc.status, exc.body()
        except Exception:  # a bug must not kill the worker thread nor leak a traceback
            log.exception("unhandled error on %s %s", request.method, request.path)
            status, body = 500, {"code": -1000, "msg": "An unknown error occurred while "
                                                        "processing the request."}
        response = Response(json.dumps(body), status=status, mimetype="application/json",
                            headers=headers)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> tuple[int, JsonBody]:
        path = request.path.rstrip("/") or "/"
        if path == "/health":
            return 200, {"status": "ok"}
        if path.startswith("/paper/"):
            return 200, self.admin(request, path)
        route = self.routes.get((request.method, path))
        if route is None:
            if any(p == path for _, p in self.routes):
                raise ApiError(-1000, f"Method {request.method} not allowed on {path}.", 405)
            raise ApiError(-1000, f"Path {path} not found.", 404)
        handler, security = route
        signed = security == SIGNED
        query = request.query_string.decode()
        body = request.get_data(as_text=True) if request.method in ("POST", "PUT") else ""
        if security != NONE:
            self.check_key(request)
        if signed:
            self.check_signature(query, body)
        params = Params([*parse_qsl(query, keep_blank_values=True),
                         *parse_qsl(body, keep_blank_values=True)])
        if signed:
            self.check_timestamp(params)
        return 200, handler(params)

    def check_weight(self, request: Request, headers: dict[str, str]) -> None:
        """Charge the request's weight; past the limit: 429 -1003 with Retry-After."""
        path = request.path.rstrip("/") or "/"
        if self.limiter is None or path == "/health" or path.startswith("/paper/"):
            return
        params = dict(parse_qsl(request.query_string.decode(), keep_blank_values=True))
        verdict = self.limiter.charge(request_weight(path, params))
        headers["X-MBX-USED-WEIGHT-1M"] = str(verdict.used)
        if not verdict.allowed:
            headers["Retry-After"] = str(verdict.retry_after_s)
            raise self.limiter.rejection()

    # --- security ------------------------------------------------------------------
    def check_key(self, request: Request) -> None:
        given = request.headers.get("X-MBX-APIKEY", "")
        if not self.api_key or not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise ApiError(-2015, "Invalid API-key, IP, or permissions for action.", 401)

    def check_signature(self, query: str, body: str) -> None:
        # Binance signs totalParams = query string + body, byte for byte; parsing and
        # re-encoding could reorder or re-escape, so the HMAC is over the raw text.
        total = query + body
        marker = total.rfind("signature=")
        if marker < 0 or (marker > 0 and total[marker - 1] != "&"):
            raise ApiError(-1102, "Mandatory parameter 'signature' was not sent, was "
                                  "empty/null, or malformed.")
        given = total[marker + len("signature="):]
        if "&" in given:  # anything after the signature would be unsigned
            raise ApiError(-1022, "Signature for this request is not valid.", 401)
        message = total[:marker].removesuffix("&").encode()
        expected = hmac.new(self.secret, message, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, given.lower()):
            raise ApiError(-1022, "Signature for this request is not valid.", 401)

    @staticmethod
    def check_timestamp(params: Params) -> None:
        timestamp = params.int("timestamp")
        if timestamp is None:
            raise ApiError(-1102, "Mandatory parameter 'timestamp' was not sent, was "
                                  "empty/null, or malformed.")
        window = params.int("recvWindow") or 5000
        if window > 60000:
            raise ApiError(-1131, "recvWindow must be less than 60000")
        server = now_ms()
        if timestamp >= server + 1000 or server - timestamp > window:
            raise ApiError(-1021, "Timestamp for this request is outside of the recvWindow.")

    # --- admin hooks ---------------------------------------------------------------
    def admin(self, request: Request, path: str) -> JsonBody:
        # Unsigned on purpose (curl-friendly), but still behind the API key.
        self.check_key(request)
        if (request.method, path) == ("GET", "/paper/state"):
            return views.state(self.engine)
        if (request.method, path) == ("POST", "/paper/reset"):
            self.engine.reset()
            return {"status": "reset"}
        if (request.method, path) == ("POST", "/paper/price"):
            try:
                data = json.loads(request.get_data(as_text=True) or "{}")
                symbol = str(data["symbol"]).upper()
                price = Decimal(str(data["price"]))
            except (ValueError, KeyError, TypeError, InvalidOperation):
                raise ApiError(-1102, "Body must be JSON {symbol, price[, hold]}.") from None
            spec_of(symbol)
            if not price.is_finite() or price <= 0:
                raise ApiError(-1130, "Data sent for parameter 'price' is not valid.")
            hold = data.get("hold")
            tick = self.market.pin(symbol, price, None if hold is None else bool(hold))
            # Evaluate triggers now, so a test sees the effect as soon as this returns.
            self.engine.on_mark(symbol, tick.mark_price)
            return {"symbol": symbol, "price": str(tick.price), "markPrice": str(tick.mark_price),
                    "hold": self.market.is_held(symbol)}
        if path == "/paper/faults":
            return self.admin_faults(request)
        if (request.method, path) == ("GET", "/paper/orders"):
            return self.all_orders()
        hook = self.admin_hooks.get((request.method, path))
        if hook is not None:
            return hook()
        raise ApiError(-1000, f"Path {path} not found.", 404)

    def admin_faults(self, request: Request) -> JsonBody:
        if request.method == "GET":
            return self.faults.view()
        if request.method == "DELETE":
            return self.faults.clear()
        if request.method == "POST":
            try:
                data = json.loads(request.get_data(as_text=True) or "{}")
            except ValueError:
                raise ApiError(-1102, "Body must be JSON {error_rate, errors, seconds}.") from None
            return self.faults.set(FaultSpec.parse(data))
        raise ApiError(-1000, f"Method {request.method} not allowed on /paper/faults.", 405)

    def all_orders(self) -> JsonBody:
        """Every order and algo order ever accepted (client ids: the duplicate check)."""
        with self.engine.lock:
            orders = [o.to_json(SYMBOLS[o.symbol].price_precision)
                      for o in self.engine.orders.values()]
            algos = [a.to_json(SYMBOLS[a.symbol].price_precision)
                     for a in self.engine.algos.values()]
        return {"orders": orders, "algoOrders": algos}

    def close_listen_key(self, p: Params) -> JsonBody:
        self.listen_keys.close(p.opt("listenKey"))
        return {}

    # --- market data ---------------------------------------------------------------
    def ticker(self, p: Params) -> JsonBody:
        if p.opt("symbol") is None:
            return [views.ticker_24hr(self.market, s, now_ms()) for s in SYMBOLS]
        return views.ticker_24hr(self.market, p.symbol(), now_ms())

    def premium_index(self, p: Params) -> JsonBody:
        if p.opt("symbol") is None:
            return [views.premium_index(self.market, s, now_ms()) for s in SYMBOLS]
        return views.premium_index(self.market, p.symbol(), now_ms())

    def klines(self, p: Params) -> JsonBody:
        symbol = p.symbol()
        interval = p.req("interval")
        if interval not in INTERVAL_MS:
            raise ApiError(-1120, "Invalid interval.")
        limit = p.int("limit") or 500
        if not 1 <= limit <= 1500:
            raise ApiError(-1130, "Data sent for parameter 'limit' is not valid.")
        return views.klines(self.market, symbol, interval, limit, p.int("startTime"),
                            p.int("endTime"))

    # --- account -------------------------------------------------------------------
    def set_dual(self, p: Params) -> JsonBody:
        if p.bool("dualSidePosition"):
            raise ApiError(-1130, "Data sent for parameter 'dualSidePosition' is not valid: "
                                  "the paper exchange supports one-way mode only.")
        raise ApiError(-4059, "No need to change position side.")

    def position_risk(self, p: Params) -> JsonBody:
        symbol = p.symbol() if p.opt("symbol") else None
        return views.positions(self.engine, symbol)

    def leverage_bracket(self, p: Params) -> JsonBody:
        if p.opt("symbol") is None:
            return [views.leverage_brackets(s) for s in SYMBOLS]
        return views.leverage_brackets(p.symbol())

    def user_trades(self, p: Params) -> JsonBody:
        symbol = p.symbol()
        limit = min(p.int("limit") or 500, 1000)
        places = SYMBOLS[symbol].price_precision
        return [t.to_json(places) for t in self.engine.user_trades(
            symbol, p.int("startTime"), p.int("endTime"), limit, p.int("fromId"))]

    # --- orders --------------------------------------------------------------------
    @staticmethod
    def _one_way(p: Params) -> None:
        if (p.opt("positionSide") or "BOTH").upper() != "BOTH":
            raise ApiError(-4061, "Order's position side does not match user's setting.")

    def new_order(self, p: Params) -> JsonBody:
        symbol = p.symbol()
        order_type = p.req("type").upper()
        if order_type in STOP_TYPES:
            raise ApiError(-4120, "Order type not supported for this endpoint. Please use the "
                                  "Algo Order API endpoints instead.")
        if order_type != "MARKET":
            raise ApiError(-1116, "Invalid orderType: the paper exchange fills MARKET orders "
                                  "only.")
        self._one_way(p)
        if p.bool("closePosition"):
            raise ApiError(-1106, "Parameter 'closePosition' sent when not required.")
        order = self.engine.place_market(symbol, p.req("side").upper(), p.decimal("quantity"),
                                         p.bool("reduceOnly"), p.opt("newClientOrderId"))
        return order.to_json(SYMBOLS[symbol].price_precision)

    @staticmethod
    def _order_of(p: Params) -> tuple[int | None, str | None]:
        order_id, client_id = p.int("orderId"), p.opt("origClientOrderId")
        if order_id is None and client_id is None:
            raise ApiError(-1102, "Either 'orderId' or 'origClientOrderId' must be sent.")
        return order_id, client_id

    def get_order(self, p: Params) -> JsonBody:
        symbol = p.symbol()
        order = self.engine.find_order(symbol, *self._order_of(p))
        return order.to_json(SYMBOLS[symbol].price_precision)

    def cancel_order(self, p: Params) -> JsonBody:
        symbol = p.symbol()
        order = self.engine.cancel_order(symbol, *self._order_of(p))
        return order.to_json(SYMBOLS[symbol].price_precision)

    def new_algo(self, p: Params) -> JsonBody:
        symbol = p.symbol()
        if p.req("algoType").upper() != "CONDITIONAL":
            raise ApiError(-1130, "Data sent for parameter 'algoType' is not valid.")
        self._one_way(p)
        close_position = p.bool("closePosition")
        if close_position and p.opt("reduceOnly") is not None and not p.bool("reduceOnly"):
            raise ApiError(-4138, "Reduce only must be true with closePosition equals true.")
        algo = self.engine.place_algo(
            symbol, p.req("side").upper(), p.req("type").upper(), p.decimal("quantity"),
            p.decimal("triggerPrice"), p.bool("reduceOnly"), close_position,
            p.opt("clientAlgoId"), (p.opt("workingType") or "CONTRACT_PRICE").upper())
        return algo.to_json(SYMBOLS[symbol].price_precision)

    @staticmethod
    def _algo_of(p: Params) -> tuple[int | None, str | None]:
        algo_id, client_id = p.int("algoId"), p.opt("clientAlgoId")
        if algo_id is None and client_id is None:
            raise ApiError(-1102, "Either 'algoId' or 'clientAlgoId' must be sent.")
        return algo_id, client_id

    def get_algo(self, p: Params) -> JsonBody:
        algo = self.engine.find_algo(*self._algo_of(p))
        return algo.to_json(SYMBOLS[algo.symbol].price_precision)

    def cancel_algo(self, p: Params) -> JsonBody:
        algo = self.engine.cancel_algo(*self._algo_of(p))
        return {"algoId": algo.algo_id, "clientAlgoId": algo.client_algo_id, "code": "200",
                "msg": "success"}

    def open_algos(self, p: Params) -> JsonBody:
        symbol = p.symbol() if p.opt("symbol") else None
        return [a.to_json(SYMBOLS[a.symbol].price_precision)
                for a in self.engine.open_algos(symbol)]
