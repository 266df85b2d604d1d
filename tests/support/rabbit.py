"""A throw-away RabbitMQ vhost per test (management API on 127.0.0.1:15672, guest)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

API = "http://127.0.0.1:15672/api"
AUTH = "Basic " + base64.b64encode(b"guest:guest").decode()


def _api(method: str, path: str, body: dict[str, object] | None = None) -> None:
    req = urllib.request.Request(API + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": AUTH,
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10):
        pass


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def temporary_vhost(prefix: str = "phoenix95_test") -> Iterator[str]:
    """Yield the AMQP URI of a fresh vhost (guest has every permission); delete it after.

    Through the management API, or ``rabbitmqctl`` on this machine when the management
    plugin is not enabled (scripts/test enables it; a developer's broker may not have it)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    quoted = urllib.parse.quote(name, safe="")
    try:
        _api("PUT", f"/vhosts/{quoted}", {})
        via_api = True
    except urllib.error.URLError:
        if shutil.which("rabbitmqctl") is None:
            raise
        _ctl("add_vhost", name)
        via_api = False
    try:
        if via_api:
            _api("PUT", f"/permissions/{quoted}/guest",
                 {"configure": ".*", "write": ".*", "read": ".*"})
        else:
            _ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@127.0.0.1:5672/{quoted}"
    finally:
        if via_api:
            _api("DELETE", f"/vhosts/{quoted}")
        else:
            _ctl("delete_vhost", name)
