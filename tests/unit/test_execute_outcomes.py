"""Outcome.status and Correction.kind/level are closed sets: a typo fails where it is made."""

from __future__ import annotations

import pytest

from nameko_services.execute.engine import Outcome
from nameko_services.execute.reconcile import Correction


def test_every_known_outcome_status_is_accepted_and_a_typo_is_not():
    for status in ("opened", "duplicate", "failed", "blocked", "closed", "nothing_to_close"):
        assert Outcome(status, "BTCUSDT", "sig").status == status
    with pytest.raises(ValueError, match="unknown outcome status"):
        Outcome("open", "BTCUSDT", "sig")  # type: ignore[arg-type]


def test_a_correction_of_an_unknown_kind_or_level_is_refused():
    assert Correction("booked_close", "BTCUSDT", "sig", "info", "closed").kind == "booked_close"
    with pytest.raises(ValueError):
        Correction("booked", "BTCUSDT", "sig", "info", "closed")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Correction("rearmed", "BTCUSDT", "sig", "urgent", "x")  # type: ignore[arg-type]
