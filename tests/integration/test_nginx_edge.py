"""The shipped nginx.conf, run for real on free loopback ports in front of a stand-in brain.

HTTP only redirects (308) to HTTPS; HTTPS proxies POST /webhook and nothing else; the
internal gateway refuses /metrics. Skips where Debian's nginx or openssl is missing.
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "compose" / "nginx" / "nginx.conf"



# The stand-in brain runs in a process of its own: threads of this test process may be
# green (another module of the suite can leave eventlet's patches in place).
UPSTREAM = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def _answer(self):
        body = f"upstream {self.command} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = _answer
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _accepting(port: int, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    wait_for(lambda: _accepting(port, proc), timeout=10, what=f"a listener on {port}")


@pytest.fixture()
def edge(tmp_path: Path) -> Iterator[dict[str, int]]:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if nginx is None or shutil.which("openssl") is None:
        pytest.skip("nginx or openssl is not installed")
    ports = {"http": free_port(), "https": free_port(), "gateway": free_port(),
             "upstream": free_port()}
    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(ports["upstream"])],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_port(ports["upstream"], upstream)
    made = subprocess.run(["sh", str(CONF.parent / "make-selfsigned-cert.sh"), "localhost",
                           str(tmp_path / "tls")], capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    text = re.sub(r"server (brain|risk|execute|notify):\d+",
                  f"server 127.0.0.1:{ports['upstream']}", CONF.read_text())
    text = (text.replace("listen 80 default_server;", f"listen 127.0.0.1:{ports['http']};")
            .replace("listen 443 ssl default_server;", f"listen 127.0.0.1:{ports['https']} ssl;")
            .replace("listen 8080;", f"listen 127.0.0.1:{ports['gateway']};")
            .replace("/etc/nginx/tls/", f"{tmp_path}/tls/")
            .replace("worker_processes auto;", "worker_processes 1;"))
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", f"{tmp_path}/",
                             "-g", f"daemon off; pid {tmp_path}/nginx.pid;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_port(ports["https"], proc)
        yield ports
    finally:
        for child in (proc, upstream):
            child.terminate()
            child.wait(10)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: object, **_kw: object) -> None:
        return None


def _call(url: str, data: bytes | None = None) -> tuple[int, str, dict[str, str]]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the lab's self-signed certificate
    opener = urllib.request.build_opener(_NoRedirect, urllib.request.HTTPSHandler(context=ctx))
    try:
        with opener.open(urllib.request.Request(url, data=data), timeout=5) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace"), dict(exc.headers)


def test_http_redirects_the_webhook_to_https_keeping_the_post(edge: dict[str, int]) -> None:
    status, _, headers = _call(f"http://127.0.0.1:{edge['http']}/webhook", data=b"{}")
    assert status == 308
    assert headers["Location"] == "https://127.0.0.1/webhook"  # the standard port 443


def test_https_proxies_the_webhook_and_nothing_else(edge: dict[str, int]) -> None:
    base = f"https://127.0.0.1:{edge['https']}"
    status, body, headers = _call(f"{base}/webhook", data=b"{}")
    assert (status, body) == (200, "upstream POST /webhook")
    assert "max-age" in headers["Strict-Transport-Security"]
    assert _call(f"{base}/metrics")[0] == 404
    assert _call(f"{base}/webhook")[0] == 403  # GET: limit_except POST


def test_gateway_proxies_the_api_but_not_metrics(edge: dict[str, int]) -> None:
    base = f"http://127.0.0.1:{edge['gateway']}"
    assert _call(f"{base}/risk/status")[:2] == (200, "upstream GET /status")
    for service in ("brain", "risk", "execute", "notify"):
        assert _call(f"{base}/{service}/metrics")[0] == 404
    assert _call(f"{base}/notify/dashboard")[0] == 404
