"""Every process that runs a leader-elected duty may write its lease (shared/leader.py)
with its own Redis ACL user: without it the duty never runs (found by the e2e suite once
the per-process users and the leases met)."""

from __future__ import annotations

import pytest

from scripts import grants
from shared import names

DUTY_HOLDERS = {
    names.DUTY_RECONCILIATION: "execute",
    names.DUTY_RISK_WATCH: "risk",
    names.DUTY_NOTIFY_MONITOR: "notify",
    names.DUTY_TELEGRAM_POLLING: "telegram",
}


@pytest.mark.parametrize("duty,kind", sorted(DUTY_HOLDERS.items()))
def test_the_holder_of_each_duty_may_write_its_lease(duty: str, kind: str) -> None:
    rules = grants.redis_acl_rules(kind, "pw")

    assert f"%RW~{names.LEADER_KEY_PREFIX}*" in rules, (duty, kind)


def test_read_only_and_leaseless_processes_get_no_lease_write() -> None:
    for kind in ("dashboard", "feed", "brain"):
        assert f"%RW~{names.LEADER_KEY_PREFIX}*" not in grants.redis_acl_rules(kind, "pw")
