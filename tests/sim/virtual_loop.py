"""An asyncio event loop on virtual time: timers fire in order, and no time passes between.

The node simulator runs real RaftNodes, RSMs and their timers (the ticker,
``asyncio.wait_for`` in the RSM, ``asyncio.sleep``) on this loop. Its clock
stands still while there is work ready to run and jumps straight to the next
timer when there is none, so a run of seconds of cluster time takes as long
as its callbacks take, and two runs of one seed schedule the same callbacks
in the same order: the loop has no I/O to wait for, and asyncio orders
callbacks FIFO and timers by due time (then by when they were scheduled).

Nothing may do real I/O on it: its selector reports no file ever ready. The
loop's own self-pipe is registered there and never read, which is harmless
because nothing in a simulation wakes the loop from another thread.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Mapping
from typing import Any


class Deadlock(RuntimeError):
    """The loop has nothing to run and no timer pending: it would wait forever."""


class _VirtualSelector(selectors.BaseSelector):
    """A selector with no I/O: ``select(timeout)`` advances the loop's clock instead."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop
        self._keys: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise Deadlock("no callback ready and no timer pending")
        self._loop.advance(timeout)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A SelectorEventLoop whose ``time()`` is virtual, starting at 0."""

    def __init__(self) -> None:
        self._virtual_now = 0.0
        super().__init__(selector=_VirtualSelector(self))

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the clock forward (the loop calls this when it would sleep)."""
        if seconds > 0:
            self._virtual_now += seconds
