"""ExchangeGateway.call: the circuit breaker counts failures without queueing requests."""

from __future__ import annotations

import threading

import ccxt
import pytest

from shared.market import ExchangeGateway, ExchangeUnavailable
from shared.settings import load_settings


@pytest.fixture
def gateway(secrets_env) -> ExchangeGateway:
    return ExchangeGateway(load_settings(), client=object(), name="test")  # type: ignore[arg-type]


def test_concurrent_requests_are_in_flight_together(gateway):
    meet = threading.Barrier(2, timeout=5)
    results: list[str] = []

    def request(name: str) -> None:
        results.append(gateway.call(lambda: meet.wait() is not None and name))

    threads = [threading.Thread(target=request, args=(n,)) for n in ("sl", "tp")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    assert sorted(results) == ["sl", "tp"]
    assert not meet.broken


def test_network_failures_open_the_circuit_and_then_nothing_is_sent(gateway):
    sent: list[int] = []

    def down() -> None:
        sent.append(1)
        raise ccxt.NetworkError("connection refused")

    for _ in range(gateway.settings.high_availability.circuit_breaker_failures):
        with pytest.raises(ExchangeUnavailable):
            gateway.call(down)

    with pytest.raises(ExchangeUnavailable, match="circuit open"):
        gateway.call(down)
    assert gateway.breaker.current_state == "open"
    assert len(sent) == gateway.settings.high_availability.circuit_breaker_failures


def test_refused_orders_do_not_trip_the_circuit(gateway):
    def refused() -> None:
        raise ccxt.InsufficientFunds("Margin is insufficient.")

    for _ in range(gateway.settings.high_availability.circuit_breaker_failures + 2):
        with pytest.raises(ccxt.InsufficientFunds):
            gateway.call(refused)

    assert gateway.breaker.current_state == "closed"
