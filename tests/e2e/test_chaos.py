"""The fault-injection suite (scripts/chaos) at CI size: a service killed with kill -9 and
the exchange failing requests, each during a burst of alerts, then every invariant checked:
no accepted signal lost, nothing sent twice, every position protected, book == exchange."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from scripts.chaos import flatten, run_once
from scripts.chaos_faults import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(settings: Any, paper_url: str, rpc: Any) -> Iterator[Stack]:
    stack = Stack(settings, settings.services.run_path(), paper_url)
    yield stack
    flatten(stack, rpc)  # no fault left active, no position left open


@pytest.mark.parametrize("scenario", ["kill-execute", "exchange-faults"])
def test_no_signal_lost_nothing_duplicated_every_position_protected(stack, rpc, scenario):
    result = run_once(stack, rpc, scenario, 1, "small", random.Random(95))

    v = result.verdict
    assert v.accepted > 0
    assert v.lost == [] and v.multi == []
    assert v.duplicated == []
    assert v.unprotected == []
    assert v.book_diff == []
