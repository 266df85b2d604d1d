from __future__ import annotations

import pytest

from tests.support.brain_fakes import FakeMarket


@pytest.fixture
def fake_market() -> FakeMarket:
    return FakeMarket()
