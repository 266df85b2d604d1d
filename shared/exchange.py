"""One ccxt ``binanceusdm`` client for every mode; the mode only changes URLs and keys."""

from __future__ import annotations

from typing import Any

import ccxt

from shared.settings import Settings

# ccxt's USD-M api groups and the path each one maps to on a Binance-compatible host.
_FAPI_PATHS = {
    "fapiPublic": "fapi/v1",
    "fapiPublicV2": "fapi/v2",
    "fapiPublicV3": "fapi/v3",
    "fapiPrivate": "fapi/v1",
    "fapiPrivateV2": "fapi/v2",
    "fapiPrivateV3": "fapi/v3",
    "fapiData": "futures/data",
}


def make_exchange(settings: Settings, *, base_url: str | None = None) -> ccxt.binanceusdm:
    """Build the ccxt client for ``settings.exchange.mode``.

    ``paper`` points every USD-M endpoint at the local paper exchange (or ``base_url``),
    applies the USD-M error table (ccxt only does so for Binance's own hosts) and turns
    off the spot currency lookup; ``demo`` uses ``enable_demo_trading(True)``.
    """
    ex_cfg = settings.exchange
    options: dict[str, Any] = {
        "fetchCurrencies": False,
        "defaultType": "future",
        "warnOnFetchOpenOrdersWithoutSymbol": False,
        "fetchOpenOrders": {"warnWithoutSymbol": False},
    }
    client = ccxt.binanceusdm(
        {
            "apiKey": ex_cfg.api_key.get_secret_value(),
            "secret": ex_cfg.api_secret.get_secret_value(),
            "timeout": ex_cfg.timeout_ms,
            "enableRateLimit": ex_cfg.mode != "paper",
            "options": options,
        }
    )
    if ex_cfg.mode == "paper":
        root = (base_url or settings.paper_exchange.base_url).rstrip("/")
        api = dict(client.urls["api"])
        for key, path in _FAPI_PATHS.items():
            api[key] = f"{root}/{path}"
        client.urls["api"] = api
        client.exceptions["exact"].update(client.exceptions["linear"]["exact"])
        client.exceptions["broad"].update(client.exceptions["linear"].get("broad", {}))
    elif ex_cfg.mode == "demo":
        client.enable_demo_trading(True)
    return client


def client_order_id(prefix: str, idempotency_key: str) -> str:
    """Deterministic Binance client id (<= 36 chars, ``[.A-Z:/a-z0-9_-]``)."""
    import hashlib

    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[: 36 - len(prefix) - 1]
    return f"{prefix}-{digest}"
