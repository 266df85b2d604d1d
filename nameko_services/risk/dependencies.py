"""Risk's dependency provider: hands each worker the process's :class:`RiskDesk` facade.

The desk itself (checks, supervision, the live watch, status) is in
:mod:`nameko_services.risk.desk`; its stores in :mod:`~nameko_services.risk.stores`,
:mod:`~nameko_services.risk.reservations` and :mod:`~nameko_services.risk.ledger`.
"""

from __future__ import annotations

import logging
from typing import Any

from nameko.extensions import DependencyProvider

from nameko_services.risk.desk import RiskDesk, build_desk
from shared.settings import get_settings

log = logging.getLogger(__name__)


class Desk(DependencyProvider):
    """The process's :class:`RiskDesk`; mirrors the durable trading state at start."""

    def setup(self) -> None:
        self.desk = build_desk(get_settings())

    def start(self) -> None:
        state = self.desk.state.mirror()
        log.info("trading state at start: %s (mirrored to %s)", state, self.desk.state.key)

    def get_dependency(self, worker_ctx: Any) -> RiskDesk:
        return self.desk
