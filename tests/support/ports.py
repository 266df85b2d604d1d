"""Local resources a test starts itself: a free loopback port, an installed binary."""

from __future__ import annotations

import os
import shutil
import socket

import pytest


def free_port() -> int:
    """A loopback port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def installed(*names: str) -> str:
    """The first of ``names`` on PATH; skip locally, fail under CI (scripts/test installs
    them with compose/validators.sh) when none is."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    message = f"{names[0]} is not installed (sh compose/validators.sh)"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message)
    pytest.skip(message)
