"""A small HTTP server script run in a process of its own, on a free port.

A process of its own: whatever the test session did to this process's threading
(eventlet, other tests' pollers), the server answers on its own schedule.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.waiting import wait_for


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@contextmanager
def serving(script: str) -> Iterator[str]:
    """Run ``python -c script PORT``; yield ``http://127.0.0.1:PORT`` once it accepts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", script, str(port)])
    try:
        wait_for(lambda: _accepts(port), timeout=15, what=f"the stub server on {port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)
