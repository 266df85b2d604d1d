"""``python -m nameko_services.paper_exchange``: serve until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

from shared.settings import settings_or_exit

from .server import PaperExchange


def main() -> int:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_or_exit()
    exchange = PaperExchange(settings)
    done = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("signal %d: shutting down", signum)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    exchange.start()
    while not done.wait(1.0):  # a timed wait keeps signal delivery prompt
        pass
    exchange.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
