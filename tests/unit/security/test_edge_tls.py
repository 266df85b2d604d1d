"""The shipped edge: nginx serves the webhook over HTTPS only and never proxies /metrics."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
NGINX = (ROOT / "compose" / "nginx" / "nginx.conf").read_text()


def _server(listen: str) -> str:
    blocks = re.split(r"\n    server \{", NGINX)
    (block,) = [b for b in blocks if f"listen {listen}" in b]
    return block


def test_port_80_only_redirects_to_https_keeping_the_method() -> None:
    plain = _server("80 ")
    assert "return 308 https://$host$request_uri;" in plain
    assert "proxy_pass" not in plain


def test_webhook_is_served_over_tls_with_modern_protocols_only() -> None:
    tls = _server("443 ssl")
    assert "ssl_certificate /etc/nginx/tls/tls.crt;" in tls
    assert "ssl_certificate_key /etc/nginx/tls/tls.key;" in tls
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in tls
    assert "location = /webhook" in tls and "proxy_pass http://brain;" in tls
    assert "Strict-Transport-Security" in tls


def test_no_public_server_proxies_metrics_and_the_gateway_refuses_them() -> None:
    for listen in ("80 ", "443 ssl"):
        assert "metrics" not in _server(listen)
    gateway = _server("8080")
    assert "location ~ ^/(brain|risk|execute|notify)/(metrics|dashboard)$" in gateway


def test_compose_mounts_a_configurable_certificate_directory_and_publishes_443() -> None:
    for kind in ("prod", "ha"):
        nginx = yaml.safe_load((ROOT / "compose" / f"docker-compose.{kind}.yml").read_text())[
            "services"]["nginx"]
        assert "${PHOENIX_TLS_DIR:-./nginx/tls}:/etc/nginx/tls:ro" in nginx["volumes"]
        assert "443:443" in nginx["ports"]
        assert "127.0.0.1:8080:8080" in nginx["ports"]


def test_k8s_ingress_has_a_tls_block_and_forces_https() -> None:
    ingress = yaml.safe_load((ROOT / "k8s" / "ingress.yaml").read_text())
    (tls,) = ingress["spec"]["tls"]
    assert tls["secretName"] and tls["hosts"] == [ingress["spec"]["rules"][0]["host"]]
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"
    paths = [p["path"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert paths == ["/webhook"]
