"""execute's POST /trade answers 422 JSON for quantities that are not positive finite numbers."""

from __future__ import annotations

import json

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request


@pytest.mark.parametrize("quantity", ["NaN", "nan", "sNaN", "Infinity", "-Infinity", "-1", "0",
                                      "abc", None, [], {}])
def test_bad_quantity_is_a_422_with_error_and_reason(secrets_env, quantity) -> None:
    from nameko.testing.services import worker_factory

    from nameko_services.execute.service import ExecuteService
    from shared.settings import load_settings

    service = worker_factory(ExecuteService, config=load_settings())
    body = {"symbol": "BTCUSDT", "side": "LONG", "quantity": quantity}
    env = EnvironBuilder(method="POST", path="/trade", data=json.dumps(body),
                         headers={"X-API-Key": "unit-test-api-key-long-enough-24"}).get_environ()

    resp = service.trade_http(Request(env))

    assert resp.status_code == 422
    assert json.loads(resp.get_data()) == {
        "error": "quantity: a positive number is required", "reason": "invalid_field",
        "field": "quantity"}
    service.risk.check.assert_not_called()
