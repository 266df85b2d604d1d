"""ccxt.pro ``binanceusdm`` with a tee: raw messages and connection changes reach the feed.

ccxt drops what the state needs (kline ``x``, ``cw``/``iw``, ``listenKeyExpired``) and
reconnects only inside the next ``watch_*`` call, so the feed reads the raw events here and
learns of every connect/close at once (notes/binance-usdm-websocket.md §4.5-§4.6).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import ccxt.pro as ccxtpro

from shared.exchange import make_pro_exchange
from shared.settings import Settings

log = logging.getLogger("phoenix95.feed.client")

# ccxt re-POSTs/PUTs the listenKey on this schedule; the feed keeps the key alive itself
# (ccxt 4.5 reschedules its PUT only once and ignores listenKeyExpired), so push ccxt's
# own upkeep out of the way to keep the idle REST budget to the feed's keepalive alone.
CCXT_LISTEN_KEY_REFRESH_MS = 24 * 3600 * 1000


class Tee(Protocol):
    def message(self, client: Any, message: Any) -> None: ...

    def connected(self, client: Any) -> None: ...

    def down(self, client: Any, reason: Any) -> None: ...


def is_private(client: Any) -> bool:
    return "listenKey=" in str(getattr(client, "url", "")) or \
        "/private" in str(getattr(client, "url", ""))


def is_socket(client: Any) -> bool:
    """ccxt also keeps a never-dialled pseudo client ("authenticationFlights")."""
    return str(getattr(client, "url", "")).startswith(("ws://", "wss://"))


class TeeExchange(ccxtpro.binanceusdm):
    tee: Tee | None = None

    def handle_message(self, client: Any, message: Any) -> Any:
        if self.tee is not None:
            try:
                self.tee.message(client, message)
            except Exception:  # a bad message never stops ccxt's receive loop
                log.exception("tee failed on a message")
        return super().handle_message(client, message)

    def on_connected(self, client: Any, message: Any = None) -> None:
        super().on_connected(client, message)
        if self.tee is not None and is_socket(client):
            self.tee.connected(client)

    def on_close(self, client: Any, error: Any) -> None:
        if self.tee is not None and is_socket(client):
            self.tee.down(client, error)
        super().on_close(client, error)

    def on_error(self, client: Any, error: Any) -> None:
        if self.tee is not None and is_socket(client):
            self.tee.down(client, error)
        super().on_error(client, error)


def make_tee_exchange(settings: Settings, tee: Tee, *, base_url: str | None = None,
                      ws_url: str | None = None) -> TeeExchange:
    """Inside the running loop: the ccxt.pro client, its raw messages going to ``tee``."""
    ex: TeeExchange = make_pro_exchange(settings, base_url=base_url, ws_url=ws_url,
                                        cls=TeeExchange)
    ex.options["watchPositions"] = {"fetchPositionsSnapshot": False,
                                    "awaitPositionsSnapshot": False}
    ex.options["watchBalance"] = {"fetchBalanceSnapshot": False,
                                  "awaitBalanceSnapshot": False}
    ex.options["listenKeyRefreshRate"] = CCXT_LISTEN_KEY_REFRESH_MS
    ex.tee = tee
    return ex


async def drop_private_clients(ex: Any, reason: str) -> int:
    """Close the user-data connections so the next watch re-POSTs a listenKey and redials.

    The client is failed first (its pending watches raise NetworkError, not cancellation)
    and taken out of ``ex.clients`` so its late close cannot remove the new client of a
    same-URL reconnect.
    """
    import ccxt

    ex.options["linear"] = {"listenKey": None, "lastAuthenticatedTime": 0}
    dropped = 0
    for url, client in list((ex.clients or {}).items()):
        if not is_private(client) or not is_socket(client):
            continue
        error = ccxt.NetworkError(reason)
        client.error = error
        client.reset(error)
        ex.clients.pop(url, None)
        try:
            await client.close()
        except Exception:  # noqa: BLE001 - the socket may already be gone
            log.debug("closing a stale private client failed", exc_info=True)
        dropped += 1
    return dropped
