"""``python -m dashboard``: run the Streamlit dashboard on its bind address and port.

It binds ``services.bind_host`` (default ``services.host``, loopback), never every
interface unless told.
"""

from __future__ import annotations

import sys
from pathlib import Path

from shared.settings import settings_or_exit


def main() -> None:
    settings = settings_or_exit()
    from streamlit.web import cli as stcli

    app = Path(__file__).with_name("app.py")
    sys.argv = [
        "streamlit", "run", str(app),
        "--server.port", str(settings.services.dashboard_port),
        "--server.address", settings.services.bind_address(),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        *sys.argv[1:],
    ]
    sys.exit(stcli.main())


if __name__ == "__main__":
    main()
