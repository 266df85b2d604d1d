"""Phoenix 95 paper exchange: a local, Binance-USD-M-compatible simulator for ccxt.

Run with ``python -m nameko_services.paper_exchange``. Plain threads only: no eventlet,
no nameko, so it can run next to (not inside) the nameko services.
"""

from .server import PaperExchange

__all__ = ["PaperExchange"]
