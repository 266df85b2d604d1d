"""One ccxt ``binanceusdm`` client for every mode; the mode only changes URLs and keys.

Endpoints are configuration: ``exchange.rest_url`` / ``exchange.ws_url`` point any mode at
any Binance-compatible host (the local paper exchange included); empty means Binance's own
for the mode, and in ``paper`` mode the local paper exchange. So paper mode is nothing more
than the live code path with a local endpoint and generated keys.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import ccxt

from shared.settings import Settings

if TYPE_CHECKING:
    import ccxt.pro

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


def rest_origin(settings: Settings) -> str | None:
    """The REST origin to use, or None for ccxt's Binance URLs of the mode."""
    ex = settings.exchange
    if ex.rest_url:
        return ex.rest_url
    return settings.paper_exchange.base_url if ex.mode == "paper" else None


def ws_base(settings: Settings) -> str | None:
    """The WebSocket base (ends in ``/ws``) to use, or None for ccxt's default of the mode."""
    ex = settings.exchange
    if ex.ws_url:
        return ex.ws_url
    return settings.paper_exchange.ws_url if ex.mode == "paper" else None


def client_options() -> dict[str, Any]:
    return {
        "fetchCurrencies": False,
        "defaultType": "future",
        "warnOnFetchOpenOrdersWithoutSymbol": False,
        "fetchOpenOrders": {"warnWithoutSymbol": False},
    }


def _configure(client: Any, settings: Settings, base_url: str | None) -> Any:
    """Point ``client`` (sync or pro) at the configured endpoints of the mode."""
    ex_cfg = settings.exchange
    if ex_cfg.mode == "demo":
        client.enable_demo_trading(True)
    root = (base_url or rest_origin(settings) or "").rstrip("/")
    if root:
        api = dict(client.urls["api"])
        for key, path in _FAPI_PATHS.items():
            api[key] = f"{root}/{path}"
        # ccxt applies the USD-M error table only for Binance's own hosts (see the notes)
        client.urls["api"] = api
        client.exceptions["exact"].update(client.exceptions["linear"]["exact"])
        client.exceptions["broad"].update(client.exceptions["linear"].get("broad", {}))
    return client


def make_exchange(settings: Settings, *, base_url: str | None = None) -> ccxt.binanceusdm:
    """Build the REST client for ``settings.exchange.mode`` (``base_url`` overrides it)."""
    ex_cfg = settings.exchange
    client = ccxt.binanceusdm(
        {
            "apiKey": ex_cfg.api_key.get_secret_value(),
            "secret": ex_cfg.api_secret.get_secret_value(),
            "timeout": ex_cfg.timeout_ms,
            "enableRateLimit": ex_cfg.client_rate_limit,
            "options": client_options(),
        }
    )
    return _configure(client, settings, base_url)


def make_pro_exchange(settings: Settings, *, base_url: str | None = None,
                      ws_url: str | None = None,
                      cls: type[ccxt.pro.binanceusdm] | None = None) -> ccxt.pro.binanceusdm:
    """Build the asyncio ccxt.pro client (WebSocket streams) for the mode.

    Must be called inside the event loop that will use it. ``cls`` lets the feed pass a
    subclass that tees raw events ccxt drops (``listenKeyExpired``, closed klines).
    """
    import ccxt.pro as ccxtpro

    ex_cfg = settings.exchange
    client = (cls or ccxtpro.binanceusdm)(
        {
            "apiKey": ex_cfg.api_key.get_secret_value(),
            "secret": ex_cfg.api_secret.get_secret_value(),
            "timeout": ex_cfg.timeout_ms,
            "enableRateLimit": ex_cfg.client_rate_limit,
            "options": client_options(),
        }
    )
    _configure(client, settings, base_url)
    ws = ws_url or ws_base(settings)
    if ws:
        wsurls = dict(client.urls["api"]["ws"])
        wsurls["linear"] = ws
        client.urls["api"]["ws"] = wsurls
    return client


def client_order_id(prefix: str, idempotency_key: str) -> str:
    """Deterministic Binance client id (<= 36 chars, ``[.A-Z:/a-z0-9_-]``)."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[: 36 - len(prefix) - 1]
    return f"{prefix}-{digest}"
