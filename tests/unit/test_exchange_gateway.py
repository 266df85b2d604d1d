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


class _InternalError:
    def fapiPrivateGetLeverageBracket(self, params):
        raise ccxt.OperationFailed('binanceusdm {"code": -1001, "msg": "Internal error; '
                                   'unable to process your request."}')


def test_binance_internal_error_is_unavailability_not_a_crash(secrets_env):
    # chaos exchange-faults: a -1001 on risk's leverage-bracket request escaped as a raw
    # OperationFailed, the check raised and brain dead-lettered the signal (no outcome)
    gateway = ExchangeGateway(load_settings(), client=_InternalError(), name="t")  # type: ignore[arg-type]

    with pytest.raises(ExchangeUnavailable, match="-1001"):
        gateway.call(gateway.client.fapiPrivateGetLeverageBracket, {"symbol": "ADAUSDT"})
    assert gateway.brackets("ADAUSDT")  # the built-in table while the exchange fails


def test_refused_orders_do_not_trip_the_circuit(gateway):
    def refused() -> None:
        raise ccxt.InsufficientFunds("Margin is insufficient.")

    for _ in range(gateway.settings.high_availability.circuit_breaker_failures + 2):
        with pytest.raises(ccxt.InsufficientFunds):
            gateway.call(refused)

    assert gateway.breaker.current_state == "closed"


def test_protective_request_goes_through_an_open_circuit_and_retries_network_errors(gateway):
    gateway.breaker.open()
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ccxt.RequestTimeout("read timeout")
        return "closed"

    assert gateway.call_protective(flaky) == "closed"
    assert len(attempts) == 3


def test_protective_request_retries_binance_internal_error(gateway):
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 2:
            raise ccxt.OperationFailed("-1001 Internal error; unable to process your request")
        return "armed"

    assert gateway.call_protective(flaky) == "armed"
    assert len(attempts) == 2


def test_protective_request_gives_up_after_its_budget(gateway):
    attempts: list[int] = []

    def down() -> None:
        attempts.append(1)
        raise ccxt.ExchangeNotAvailable("503")

    with pytest.raises(ExchangeUnavailable):
        gateway.call_protective(down)
    assert 1 < len(attempts) <= 10


def test_protective_request_never_retries_a_refusal(gateway):
    attempts: list[int] = []

    def refused() -> None:
        attempts.append(1)
        raise ccxt.InvalidOrder("ReduceOnly Order is rejected.")

    with pytest.raises(ccxt.InvalidOrder):
        gateway.call_protective(refused)
    assert len(attempts) == 1


class _NoBrackets:
    def fapiPrivateGetLeverageBracket(self, params):
        raise ccxt.BadSymbol("Invalid symbol.")


def test_leverage_brackets_of_a_symbol_missing_from_the_built_in_table_are_a_clear_refusal(
        secrets_env):
    from shared.market import BracketsUnavailable

    gateway = ExchangeGateway(load_settings(), client=_NoBrackets(), name="t")  # type: ignore[arg-type]

    with pytest.raises(BracketsUnavailable, match="XRPUSDT: no leverage brackets"):
        gateway.brackets("XRPUSDT")
