"""The market and account feed: the one writer of the state in Redis (``shared.state``).

A plain asyncio process (ccxt.pro is asyncio): ``python -m nameko_services.feed``.
"""
