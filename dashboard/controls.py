"""What the dashboard changes: the sidebar's control requests (the page's only writes).

Each action is one ``POST`` to the owning service's HTTP endpoint with the API key the user
typed: risk's ``/update`` for the trading state, execute's ``/close`` for positions.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from shared import names
from shared.settings import ServicesSettings

CONTROL_ACTIONS = ("pause (REDUCING)", "halt (HALTED)", "resume (ACTIVE)", "close a position",
                   "close every position")
_STATES = {"pause": "REDUCING", "halt": "HALTED", "resume": "ACTIVE"}


def control_request(action: str, symbol: str,
                    services: ServicesSettings) -> tuple[str, dict[str, Any]]:
    """(URL, body) of one of :data:`CONTROL_ACTIONS`."""
    verb = action.split()[0]
    if verb in _STATES:
        return (f"{services.url_of(names.RISK)}/update",
                {"state": _STATES[verb], "reason": "dashboard"})
    if action == "close a position":
        return f"{services.url_of(names.EXECUTE)}/close", {"symbol": symbol}
    if action == "close every position":
        return f"{services.url_of(names.EXECUTE)}/close", {"all": True}
    raise ValueError(f"unknown control action {action!r}")


def send_control(url: str, api_key: str, body: dict[str, Any],
                 timeout: float = 10.0) -> tuple[bool, str]:
    """POST a state-changing request with ``X-API-Key``; (ok, message) for the page."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "X-API-Key": api_key})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return True, resp.read(4000).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}: {exc.read(1000).decode(errors='replace')}"
    except (OSError, ValueError) as exc:
        return False, f"unreachable: {getattr(exc, 'reason', exc)}"
