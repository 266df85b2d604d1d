"""Execute's dependency: the :class:`ExecutionEngine` with its exchange, book, lock and the
feed's account state."""

from __future__ import annotations

import logging
from typing import Any

from nameko.extensions import DependencyProvider

from nameko_services.execute.engine import ExecutionEngine, SymbolLock
from nameko_services.execute.store import TradeStore
from shared.db import make_sessionmaker
from shared.market import ExchangeGateway
from shared.nameko_deps import make_redis
from shared.settings import get_settings
from shared.state import StateReader

log = logging.getLogger(__name__)


class ExecutionEngineProvider(DependencyProvider):
    def setup(self) -> None:
        settings = get_settings()
        client = make_redis(settings)
        self.engine = ExecutionEngine(
            settings,
            ExchangeGateway(settings, name="execute"),
            TradeStore(make_sessionmaker(settings)),
            SymbolLock(client),
            StateReader(client, settings),
        )

    def start(self) -> None:
        # pre-flight off the start-up path: an unreachable exchange must not stop the
        # container from consuming; a symbol not prepared yet is prepared at first use
        self.container.spawn_managed_thread(
            self._prepare, identifier="execute.ExecutionEngineProvider.prepare")

    def _prepare(self) -> None:
        try:
            self.engine.prepare(self.engine.settings.trading.allowed_symbols)
        except Exception:  # a managed thread that raises kills the container
            log.exception("pre-flight at start-up failed; symbols are prepared at first use")

    def get_dependency(self, worker_ctx: Any) -> ExecutionEngine:
        return self.engine
