"""Request-weight limit: Binance's weights, the per-minute window, the 429 answer."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from werkzeug.test import Client

from nameko_services.paper_exchange.api import PaperApi
from nameko_services.paper_exchange.engine import MatchingEngine
from nameko_services.paper_exchange.limiter import WINDOW_MS, WeightLimiter, request_weight
from nameko_services.paper_exchange.market import Market

MINUTE = 1_795_473_300_000 - 1_795_473_300_000 % WINDOW_MS


@pytest.mark.parametrize(("path", "params", "weight"), [
    ("/fapi/v1/ticker/24hr", {"symbol": "BTCUSDT"}, 1),
    ("/fapi/v1/ticker/24hr", {}, 40),
    ("/fapi/v1/openAlgoOrders", {}, 40),
    ("/fapi/v3/account", {}, 5),
    ("/fapi/v3/positionRisk", {}, 5),
    ("/fapi/v1/klines", {"limit": "99"}, 1),
    ("/fapi/v1/klines", {}, 5),
    ("/fapi/v1/klines", {"limit": "1500"}, 10),
    ("/fapi/v1/order", {"symbol": "BTCUSDT"}, 1),
])
def test_request_weights_follow_binance(path: str, params: dict[str, str], weight: int) -> None:
    assert request_weight(path, params) == weight


def test_window_fills_then_turns_at_the_minute() -> None:
    now = [MINUTE + 59_001]
    limiter = WeightLimiter(6, clock=lambda: now[0])
    assert limiter.charge(5).allowed and limiter.charge(1).allowed
    refused = limiter.charge(1)
    assert (refused.allowed, refused.used, refused.retry_after_s) == (False, 7, 1)
    now[0] = MINUTE + WINDOW_MS
    fresh = limiter.charge(5)
    assert (fresh.allowed, fresh.used, fresh.retry_after_s) == (True, 5, 60)


def test_zero_limit_is_not_a_limiter() -> None:
    with pytest.raises(ValueError):
        WeightLimiter(0)


def test_api_answers_429_json_with_retry_after_and_spares_health_and_admin() -> None:
    market = Market(seed=95, volatility_annual=0.6, tick_interval_ms=500)
    engine = MatchingEngine(market, Decimal(10000), Decimal("0.0005"))
    limiter = WeightLimiter(2, clock=lambda: MINUTE + 30_000)
    client = Client(PaperApi(engine, market, "k", "s", limiter=limiter))

    first = client.get("/fapi/v1/ping")
    assert first.status_code == 200 and first.headers["X-MBX-USED-WEIGHT-1M"] == "1"
    info = json.loads(client.get("/fapi/v1/exchangeInfo").get_data(as_text=True))
    assert info["rateLimits"][0]["limit"] == 2
    limited = client.get("/fapi/v1/time")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "30"
    assert json.loads(limited.get_data(as_text=True))["code"] == -1003
    assert client.get("/health").status_code == 200
    assert client.get("/paper/state", headers={"X-MBX-APIKEY": "k"}).status_code == 200
