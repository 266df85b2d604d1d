#!/usr/bin/env python3
"""Set a new dashboard password: prints the .env line with its bcrypt hash.

Usage: python scripts/dashboard_password.py   (asks twice; nothing is echoed or stored)
Put the printed line into .env (or the secret store), then restart the dashboard.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts._bootstrap import ensure_venv

ensure_venv(__file__)

from scripts import lib  # noqa: E402

MIN_LENGTH = 12


def main() -> int:
    first = getpass.getpass("new dashboard password: ")
    if len(first) < MIN_LENGTH:
        print(f"too short: at least {MIN_LENGTH} characters", file=sys.stderr)
        return 2
    if getpass.getpass("again: ") != first:
        print("the two entries differ", file=sys.stderr)
        return 2
    print(f"PHOENIX__DASHBOARD__PASSWORD_HASH='{lib.bcrypt_hash(first)}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
