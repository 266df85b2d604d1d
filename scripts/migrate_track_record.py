"""Upgrade step: carry the strategies' track record over to brain's own table.

    python scripts/migrate_track_record.py

Before trade events carried the strategy, brain joined its ``brain_signal_strategies``
table with execute's ``positions``; now it books execute's ``position_closed`` records in
``brain_closed_trades``. This copies the closes booked before, once (running it again
books nothing new). Uses the configured database (``database.url``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts._bootstrap import ensure_venv

if __name__ == "__main__":
    ensure_venv(__file__)

from nameko_services.brain.track_record import import_legacy
from shared.settings import settings_or_exit


def main() -> int:
    booked = import_legacy(settings_or_exit())
    print(f"track record: {booked} earlier closes booked into brain_closed_trades")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
