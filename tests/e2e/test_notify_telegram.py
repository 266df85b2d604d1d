"""Telegram against the running system, through the local Bot API stand-in.

If the system was started with Telegram pointed at a local stand-in
(``PHOENIX__TELEGRAM__API_BASE_URL=http://127.0.0.1:<port>/bot`` plus a token and chat id),
the stand-in is started on that port and the system's own worker (``scripts/up`` starts it
when Telegram is configured) is the one under test. Otherwise the test starts the stand-in
on a free port and runs ``python -m nameko_services.notify.telegram_worker`` against it
with the system's settings.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from nameko_services.notify.telegram_format import parse_chat_ids
from shared.records import Record
from shared.settings import Settings
from tests.support.telegram_standin import TelegramStandin
from tests.support.trading import free_symbol, open_manual_trade, wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
STRANGER = 31337


@dataclass
class Telegram:
    standin: TelegramStandin
    chat: int

    def texts_to(self, chat: int) -> list[str]:
        return [m.text for m in self.standin.sent if str(m.chat_id) == str(chat)]


def _local_port(url: str) -> int | None:
    parts = urlsplit(url)
    if parts.hostname in ("127.0.0.1", "localhost") and parts.port:
        return parts.port
    return None


@pytest.fixture(scope="module")
def telegram(settings: Settings) -> Iterator[Telegram]:
    tg = settings.telegram
    port = _local_port(tg.api_base_url)
    if tg.active and port is not None:  # the system's own worker talks to this port
        token = tg.token.get_secret_value()
        chat = int(parse_chat_ids(tg.chat_id)[0])
        with TelegramStandin(token=token, port=port) as standin:
            yield Telegram(standin, chat)
        return
    if tg.active:
        pytest.skip("the system's Telegram points at a real Bot API; not messaging it")
    token, chat = "424242:E2E-TOKEN", 4242
    with TelegramStandin(token=token) as standin:
        env = dict(os.environ, PHOENIX__TELEGRAM__TOKEN=token,
                   PHOENIX__TELEGRAM__CHAT_ID=str(chat),
                   PHOENIX__TELEGRAM__API_BASE_URL=standin.base_url,
                   PHOENIX__TELEGRAM__COMMAND_POLL_TIMEOUT="2")
        proc = subprocess.Popen([sys.executable, "-m", "nameko_services.notify.telegram_worker"],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            yield Telegram(standin, chat)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def post(url: str, body: Any) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def webhook(settings: Settings, symbol: str) -> tuple[int, dict[str, Any]]:
    body = {"secret": settings.security.webhook_secret.get_secret_value(),
            "ticker": f"BINANCE:{symbol}.P", "action": "buy", "confidence": 0.8,
            "strategy": f"e2e-tg-{uuid.uuid4().hex[:8]}", "interval": "15",
            "id": f"e2e-tg-{uuid.uuid4().hex}",
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    return post(settings.services.url_of("brain") + "/webhook", body)


def records(streams: Any, stream: str, signal_id: str) -> list[Record]:
    found = [Record.from_stream_fields(f) for _, f in streams.xrevrange(stream, count=3000)]
    return [r for r in found if r.signal_id == signal_id]


def test_a_filled_trade_reaches_telegram(settings: Settings, rpc: Any, api_key: str,
                                         exchange: Any, telegram: Telegram) -> None:
    rpc.risk.set_state("ACTIVE", "e2e telegram: trade")
    symbol = free_symbol(settings, rpc)

    signal_id = open_manual_trade(settings, api_key, exchange, symbol)["signal_id"]

    fill = wait_for(lambda: next((t for t in telegram.texts_to(telegram.chat)
                                  if f"signal {signal_id}" in t
                                  and f"ENTRY FILLED {symbol}" in t), None))
    position = next(p for p in rpc.execute.positions() if p["symbol"] == symbol)
    # a digest merges several alerts: read the one of this signal
    mine = next(part for part in re.split(r"\n\s*\n", fill) if f"signal {signal_id}" in part)
    shown = re.search(rf"ENTRY FILLED {symbol} \S+ \S+ @ ([0-9.]+)", mine)
    assert shown and Decimal(shown.group(1)) == Decimal(position["entry_price"])
    for label in ("SL ", "TP ", "liq ", "margin "):
        assert label in fill


def test_status_answers_the_allowed_chat_only(telegram: Telegram) -> None:
    tg = telegram.standin
    before = len(telegram.texts_to(telegram.chat))
    tg.queue_message("/status", chat_id=STRANGER, user_id=STRANGER)
    tg.queue_message("/status", chat_id=telegram.chat, user_id=telegram.chat)

    answer = wait_for(lambda: next((t for t in telegram.texts_to(telegram.chat)[before:]
                                    if t.startswith("State: ")), None))

    assert "Equity:" in answer and "Open positions:" in answer
    # updates are handled in order: the stranger's came first and got nothing back
    assert telegram.texts_to(STRANGER) == []


def test_halt_from_telegram_then_a_webhook_is_rejected_as_halted(
        settings: Settings, rpc: Any, streams: Any, telegram: Telegram) -> None:
    tg = telegram.standin
    rpc.risk.set_state("ACTIVE", "e2e telegram: before /halt")
    try:
        tg.queue_message("/halt", chat_id=telegram.chat, user_id=telegram.chat)
        question = wait_for(lambda: next(
            (m for m in tg.sent if str(m.chat_id) == str(telegram.chat)
             and m.text.startswith("HALT trading")), None))
        confirm = question.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
        tg.queue_callback_query(confirm, chat_id=telegram.chat, user_id=telegram.chat)
        wait_for(lambda: any(t.endswith("-> HALTED") for t in telegram.texts_to(telegram.chat)))
        assert tg.calls_of("answerCallbackQuery")
        assert rpc.risk.status()["state"] == "HALTED"

        status, body = webhook(settings, free_symbol(settings, rpc))

        if status != 202:  # brain fast-fails while halted
            assert "halted" in json.dumps(body), body
            return
        signal_id = body["signal_id"]

        def rejected_as_halted() -> bool:
            found = records(streams, "signal:stream", signal_id) + \
                records(streams, "risk:stream", signal_id)
            return any(r.type in ("signal_rejected", "risk_check")
                       and "halted" in json.dumps(r.data) for r in found)

        assert wait_for(rejected_as_halted, timeout=30)
        assert not [r for r in records(streams, "trade:stream", signal_id)
                    if r.type == "entry_filled"]
    finally:
        rpc.risk.set_state("ACTIVE", "e2e telegram: cleanup")
