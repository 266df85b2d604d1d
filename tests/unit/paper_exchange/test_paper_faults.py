"""The fault injector: body validation, the draw, the deadline, the exempt paths."""

from __future__ import annotations

import random

import pytest

from nameko_services.paper_exchange.faults import KINDS, Fault, FaultInjector, FaultSpec
from nameko_services.paper_exchange.models import ApiError

BODY = {"error_rate": 0.3, "errors": ["500", "503", "timeout", "429", "-1001"], "seconds": 20}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_issue_body_parses() -> None:
    spec = FaultSpec.parse(BODY)

    assert spec == FaultSpec(0.3, ("500", "503", "timeout", "429", "-1001"), 20.0)


@pytest.mark.parametrize("body", [
    [], {"errors": ["500"], "seconds": 1}, {**BODY, "error_rate": 1.5},
    {**BODY, "seconds": 0}, {**BODY, "errors": []}, {**BODY, "errors": ["418"]},
    {**BODY, "errors": "500"[0:0] or None},
])
def test_a_bad_body_is_a_binance_error(body: object) -> None:
    with pytest.raises(ApiError):
        FaultSpec.parse(body)


def test_about_the_given_share_of_requests_fail_in_the_given_ways() -> None:
    faults = FaultInjector(random.Random(7))
    faults.set(FaultSpec.parse(BODY))

    drawn = [faults.draw("/fapi/v1/order") for _ in range(4000)]

    failed = [f for f in drawn if f is not None]
    assert 0.26 < len(failed) / len(drawn) < 0.34
    assert {f.kind for f in failed} == set(BODY["errors"])  # type: ignore[arg-type]
    assert sum(faults.view()["injected"].values()) == len(failed)


def test_admin_health_and_metrics_paths_never_fail() -> None:
    faults = FaultInjector(random.Random(1))
    faults.set(FaultSpec(1.0, ("500",), 60))

    assert [faults.draw(p) for p in ("/paper/state", "/paper/faults", "/health", "/metrics",
                                     "/health/")] == [None] * 5
    assert faults.draw("/fapi/v1/ping") == Fault("500")


def test_the_fault_ends_after_its_seconds_and_on_delete() -> None:
    clock = Clock()
    faults = FaultInjector(random.Random(1), clock=clock)
    faults.set(FaultSpec(1.0, ("503",), 20))
    assert faults.view()["active"] is True

    clock.now += 20.0
    assert faults.draw("/fapi/v1/ping") is None and faults.view()["active"] is False

    faults.set(FaultSpec(1.0, ("503",), 20))
    faults.clear()
    assert faults.draw("/fapi/v1/ping") is None


def test_each_kind_answers_as_binance_does() -> None:
    assert Fault("429").answer()[0] == 429 and Fault("429").answer()[1]["code"] == -1003
    assert Fault("500").answer() == (500, "Internal Server Error")
    assert Fault("-1001").answer()[1] == {
        "code": -1001,
        "msg": "Internal error; unable to process your request. Please try your request again."}
    assert Fault("500").answer()[0] == 500 and Fault("503").answer()[0] == 503
    assert Fault("timeout").is_timeout and not Fault("timeout").processed
    assert Fault("timeout-processed").is_timeout and Fault("timeout-processed").processed
    assert set(KINDS) > set(BODY["errors"])  # type: ignore[arg-type]
