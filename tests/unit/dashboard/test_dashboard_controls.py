"""The sidebar's controls: each action is one request to the service that owns it."""

from __future__ import annotations

import pytest

from dashboard.controls import CONTROL_ACTIONS, control_request
from shared.settings import ServicesSettings


def test_every_control_action_goes_to_its_owner() -> None:
    services = ServicesSettings(hosts={"risk": "risk-host", "execute": "execute-host"})

    requests = {a: control_request(a, "ETHUSDT", services) for a in CONTROL_ACTIONS}

    risk, execute = "http://risk-host:8101/update", "http://execute-host:8102/close"
    assert requests == {
        "pause (REDUCING)": (risk, {"state": "REDUCING", "reason": "dashboard"}),
        "halt (HALTED)": (risk, {"state": "HALTED", "reason": "dashboard"}),
        "resume (ACTIVE)": (risk, {"state": "ACTIVE", "reason": "dashboard"}),
        "close a position": (execute, {"symbol": "ETHUSDT"}),
        "close every position": (execute, {"all": True}),
    }
    with pytest.raises(ValueError):
        control_request("liquidate the lot", "ETHUSDT", services)
