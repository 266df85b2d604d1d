"""The dashboard shows nothing of the account before a login (AppTest, no services running)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import names
from shared.settings import get_settings

APP = Path(__file__).resolve().parents[3] / "dashboard" / "app.py"
PASSWORD = "correct horse battery staple"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def login_env(secrets_env, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    bcrypt = pytest.importorskip("bcrypt")
    pytest.importorskip("streamlit_authenticator")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    monkeypatch.setenv("PHOENIX__DASHBOARD__PASSWORD_HASH", hashed)
    monkeypatch.setenv("PHOENIX__DASHBOARD__USERNAME", "trader")
    monkeypatch.setenv("PHOENIX__DASHBOARD__COOKIE_KEY", "k" * 32)
    monkeypatch.setenv("PHOENIX__REDIS_STREAMS__URL", "redis://127.0.0.1:6379/5")
    monkeypatch.setenv("PHOENIX__MESSAGE_QUEUE__PORT", str(_closed_port()))
    for service in names.SERVICES:
        monkeypatch.setenv(f"PHOENIX__SERVICES__{service.upper()}_PORT", str(_closed_port()))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _app():  # type: ignore[no-untyped-def]
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    return at


def test_before_login_only_the_login_form_is_shown(login_env) -> None:
    at = _app()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.label for t in at.text_input][:2] == ["Username", "Password"]
    assert not at.title and not at.dataframe and not at.tabs


def test_a_wrong_password_is_refused_and_shows_nothing(login_env) -> None:
    at = _app()
    at.text_input[0].input("trader")
    at.text_input[1].input("not the password")
    at.button[0].click().run()
    assert any("Wrong username or password" in str(e.value) for e in at.error)
    assert not at.title and not at.dataframe


def test_the_right_password_opens_the_dashboard(login_env) -> None:
    at = _app()
    at.text_input[0].input("trader")
    at.text_input[1].input(PASSWORD)
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title and "Phoenix 95" in at.title[0].value


def test_without_a_configured_hash_nothing_is_shown(secrets_env, monkeypatch) -> None:
    monkeypatch.setenv("PHOENIX__REDIS_STREAMS__URL", "redis://127.0.0.1:6379/5")
    get_settings.cache_clear()
    at = _app()
    assert any("PHOENIX__DASHBOARD__PASSWORD_HASH" in str(e.value) for e in at.error)
    assert not at.title and not at.dataframe
    get_settings.cache_clear()


def test_python_m_dashboard_binds_the_configured_host(secrets_env, monkeypatch) -> None:
    import sys

    from streamlit.web import cli as stcli

    import dashboard.__main__ as entry

    seen: list[str] = []
    monkeypatch.setattr(stcli, "main", lambda: seen.extend(sys.argv) or 0)
    monkeypatch.setattr(sys, "argv", ["dashboard"])
    with pytest.raises(SystemExit):
        entry.main()
    assert seen[seen.index("--server.address") + 1] == "127.0.0.1"
