"""Condition waits with deadlines: how tests synchronise with real processes.

A bare ``sleep`` is a guess at how long something takes; it makes a test slow
when the guess is generous and flaky when it is not. Poll the condition
instead, and fail with a message that names it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float,
    *,
    interval_s: float = 0.01,
    message: str = "condition",
) -> T:
    """Poll ``predicate()`` until it returns something truthy, and return that.

    Raises TimeoutError naming ``message`` (and the last value seen) when
    ``timeout_s`` passes first. The predicate is always called at least once.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message}: not reached within {timeout_s}s (last: {value!r})")
        time.sleep(interval_s)
