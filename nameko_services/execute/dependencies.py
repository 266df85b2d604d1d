"""Execute's dependency: the :class:`ExecutionEngine` with its exchange, book and lock."""

from __future__ import annotations

from typing import Any

from nameko.extensions import DependencyProvider

from nameko_services.execute.engine import ExecutionEngine, SymbolLock
from nameko_services.execute.store import TradeStore
from shared.db import make_sessionmaker
from shared.market import ExchangeGateway
from shared.nameko_deps import make_redis
from shared.settings import get_settings


class Engine(DependencyProvider):
    def setup(self) -> None:
        settings = get_settings()
        self.engine = ExecutionEngine(
            settings,
            ExchangeGateway(settings, name="execute"),
            TradeStore(make_sessionmaker(settings)),
            SymbolLock(make_redis(settings)),
        )

    def get_dependency(self, worker_ctx: Any) -> ExecutionEngine:
        return self.engine
