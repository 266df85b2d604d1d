"""The dashboard against the running system: Streamlit's AppTest with real data, and a
headless Chromium screenshot (saved under test-artifacts/, git-ignored) that must show
an open position with its entry price."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from shared import names
from shared.settings import Settings, get_settings
from tests.support.trading import open_position
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "dashboard" / "app.py"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars")


@pytest.fixture(scope="module")
def position(settings: Settings, rpc: Any, api_key: str, exchange: Any) -> dict[str, Any]:
    return open_position(settings, rpc, api_key, exchange)


def test_every_page_renders_with_the_live_data(settings: Settings,
                                               position: dict[str, Any]) -> None:
    from streamlit.testing.v1 import AppTest

    get_settings.cache_clear()
    at = AppTest.from_file(str(APP), default_timeout=90)
    at.query_params["symbol"] = position["symbol"]
    at.run()

    assert not at.exception, [e.value for e in at.exception]
    assert not [e.value for e in at.error if "RPC" in str(e.value)]
    frames = [df.value for df in at.dataframe]
    positions = next(f for f in frames if "entry_price" in f.columns)
    row = positions[positions["symbol"] == position["symbol"]].iloc[0]
    assert row["entry_price"] == pytest.approx(float(position["entry_price"]))
    assert row["liq_distance_pct"] > 0
    health = next(f for f in frames if "service" in f.columns)
    assert set(names.SERVICES) <= set(health[health["up"] == "🟢"]["service"])
    signals = next(f for f in frames if "phoenix_score" in f.columns)
    assert len(signals) >= 1
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    price = next(s for s in specs if s["data"] and s["data"][0]["type"] == "candlestick")
    levels = sorted(shape["y0"] for shape in price["layout"].get("shapes", []))
    for key in ("entry_price", "stop_loss", "take_profit", "liquidation_price"):
        assert float(position[key]) == pytest.approx(
            min(levels, key=lambda y: abs(y - float(position[key])))), key
    kinds = {s["data"][0]["type"] for s in specs if s["data"]}
    assert {"candlestick", "histogram", "bar"} <= kinds  # price, latency, daily PnL


def _dashboard_up(settings: Settings) -> bool:
    svc = settings.services
    try:
        url = f"http://{svc.host}:{svc.dashboard_port}/_stcore/health"
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_chromium_screenshot_shows_the_position(settings: Settings,
                                                position: dict[str, Any]) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is not installed (/usr/bin/chromium)")
        pytest.skip("Debian's chromium is not installed")
    if not _dashboard_up(settings):
        pytest.skip("the dashboard is not running (started with --no-dashboard?)")
    svc = settings.services
    url = f"http://{svc.host}:{svc.dashboard_port}/?symbol={position['symbol']}"
    ARTIFACTS.mkdir(exist_ok=True)
    png = ARTIFACTS / "dashboard-after-trade.png"
    png.unlink(missing_ok=True)

    entry = float(position["entry_price"])
    line = f"{position['symbol']} {position['side']}"
    # the first page load of a fresh dashboard process starts its RPC and lag threads;
    # load again (each a new browser profile) until the position line is in the DOM
    # (on a loaded machine the websocket's first script run can miss the dump: retry)
    dom = wait_for(lambda: _dom_showing(chromium, url, f"@ {entry:g}"), timeout=300,
                   what="the position line in the dashboard's DOM", every=1.0)
    _chromium(chromium, f"--screenshot={png}", url)

    assert png.stat().st_size > 10_000  # a rendered page, not a blank one
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"**{position['symbol']}**" not in dom  # markdown was rendered, not echoed
    assert position["symbol"] in dom
    assert f"@ {entry:g}" in dom, "the position line with its entry price is missing"
    assert line in dom.replace("<strong>", "").replace("</strong>", "")
    assert f"LONG entry {entry:,.6g}" in dom or f"SHORT entry {entry:,.6g}" in dom  # chart


def _dom_showing(chromium: str, url: str, needle: str) -> str:
    """The page's DOM once it shows ``needle``; "" (not yet) before."""
    dom = _chromium(chromium, "--dump-dom", url)
    return dom if needle in dom else ""


def _chromium(chromium: str, action: str, url: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1600,2600",
                 "--virtual-time-budget=30000", action, url]
        result = subprocess.run([chromium, *flags], capture_output=True, text=True,
                                timeout=180, check=True)
    return str(result.stdout)
