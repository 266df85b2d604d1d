"""Phoenix 95 paper exchange: a local, Binance-USD-M-compatible simulator for ccxt/ccxt.pro.

Run with ``python -m nameko_services.paper_exchange``: REST and WebSocket on one port, from
an asyncio loop in its own thread plus plain threads; no eventlet, no nameko, so it runs
next to (not inside) the nameko services.
"""

from .server import PaperExchange

__all__ = ["PaperExchange"]
