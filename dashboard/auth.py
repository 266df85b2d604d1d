"""The dashboard's login: streamlit-authenticator over one bcrypt-hashed user from settings.

Positions, equity and PnL are shown only after a login. The user and the bcrypt hash come
from ``dashboard.username`` / ``dashboard.password_hash`` (env or ``.env``; scripts/up
generates them); the password itself is never stored. A signed cookie keeps a browser
logged in for ``dashboard.cookie_expiry_days``.
"""

from __future__ import annotations

import hashlib
import hmac

import streamlit as st

from shared.settings import DashboardSettings

COOKIE_NAME = "phoenix95_dashboard"
MAX_LOGIN_ATTEMPTS = 5  # per session; the form then refuses until the page is reloaded


def cookie_key(dashboard: DashboardSettings) -> str:
    """The cookie's signing key: its own secret, else one derived from the password hash."""
    own = dashboard.cookie_key.get_secret_value()
    if own:
        return own
    return hmac.new(dashboard.password_hash.get_secret_value().encode(),
                    b"phoenix95/dashboard-cookie", hashlib.sha256).hexdigest()


def require_login(dashboard: DashboardSettings) -> bool:
    """Render the login until the user is authenticated; True once they are."""
    if not dashboard.auth_enabled:
        return True
    hashed = dashboard.password_hash.get_secret_value()
    if not hashed:
        st.error("The dashboard needs a login: set PHOENIX__DASHBOARD__PASSWORD_HASH "
                 "(scripts/up generates one into .env; scripts/dashboard_password.py "
                 "makes a new one).")
        return False
    import streamlit_authenticator as stauth

    credentials = {"usernames": {dashboard.username: {
        "name": dashboard.username, "email": f"{dashboard.username}@localhost",
        "password": hashed, "failed_login_attempts": 0, "logged_in": False}}}
    auth = stauth.Authenticate(credentials, cookie_name=COOKIE_NAME,
                               cookie_key=cookie_key(dashboard),
                               cookie_expiry_days=dashboard.cookie_expiry_days,
                               auto_hash=False)
    try:
        auth.login(location="main", max_login_attempts=MAX_LOGIN_ATTEMPTS,
                   fields={"Form name": "Phoenix 95 — log in"})
    except Exception as exc:  # noqa: BLE001 - the library raises its own errors on refusals
        st.error(f"Login refused: {exc}")
        return False
    status = st.session_state.get("authentication_status")
    if status:
        auth.logout("Log out", location="sidebar")
        return True
    if status is False:
        st.error("Wrong username or password.")
    return False
