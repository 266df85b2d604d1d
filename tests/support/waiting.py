"""Waiting on a condition, never for a fixed time: one helper for every test."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T | None], timeout: float = 60.0, what: str = "",
             every: float = 0.05, ignore: tuple[type[BaseException], ...] = ()) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    Exceptions of the ``ignore`` types count as "not yet" (the last one is reported);
    anything else raises at once. On timeout: AssertionError naming ``what``.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except ignore as exc:
            last = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last!r})" if last is not None else ""
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what or condition}{detail}")
        time.sleep(every)
