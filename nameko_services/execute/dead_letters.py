"""The outcome of a trade intent whose message ended in the dead-letter queue.

``trade_execution`` messages that cannot be processed (poison, or retries exhausted) are
dead-lettered to ``trade_execution.dlq`` (kept for ``scripts/dlq``) and, by the same
dead-letter exchange binding, to ``trade_execution.failed``, which execute consumes here:
the intent gets its one failed outcome (``trade_failed``, which releases risk's
reservation), unless its entry filled (then the position is the outcome, protected by
reconciliation) or it had ended already. The book decides "once": the entry's row goes
from pending (or absent) to rejected in one conditional UPDATE, so a redelivered dead
letter, or a second execute instance, reports nothing twice.
"""

from __future__ import annotations

import logging

from nameko_services.execute.engine import ExecutionEngine, Outcome, intent_ids
from nameko_services.execute.exchange_ops import order_side
from nameko_services.execute.store import OrderRecord
from shared.models import TradeIntent

log = logging.getLogger(__name__)


def dead_letter_outcome(engine: ExecutionEngine, it: TradeIntent, why: str) -> Outcome | None:
    """The failed outcome to report for a dead-lettered intent, or None when there is
    none to report (filled, or ended before). Raises when the exchange cannot say whether
    the entry went out (the handler's message is retried)."""
    cid = intent_ids(it)["entry"]
    known = engine.store.order(cid)
    if known is not None and known.signal_id != it.signal_id:
        return None  # another signal's key (a reused alert id): that one owns the row
    if known is not None and known.status == "pending":
        # sent before the failure? then it is a position, adopted and protected by
        # reconciliation, not a failure
        found = engine.ops.find_order(it.symbol, cid, trigger=False)
        if found is not None and found.filled > 0:
            log.warning("%s dead-lettered after its entry %s filled: reconciliation owns "
                        "the position", it.signal_id, cid)
            return None
    reason = f"dead-lettered: {why}"
    record = OrderRecord(cid, it.signal_id, it.symbol, "entry", order_side(it.side).upper(),
                         "MARKET", it.quantity)
    if not engine.store.end_unsent_entry(record, reason):
        return None
    return Outcome("failed", it.symbol, it.signal_id, reason)
