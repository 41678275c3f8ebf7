"""Waiting for the state machine to reach an index: what a read-index read waits on last.

Seam: the RSM applies entries and says how far it got (:meth:`AppliedIndex.reached`);
a read confirmed at a read index (:mod:`kvraft.raft.read_index`) waits here
until the local store holds every entry up to it. A leader has almost always
applied its read index by the time the read is confirmed (the Ready that
confirms it applies its committed entries first), so the common case is no
wait at all; one heap keeps the rare waiter cheap.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools


class AppliedIndex:
    """The index applied so far, and futures waiting for a later one."""

    def __init__(self, index: int = 0) -> None:
        # Invariant: every future in _waiting waits for an index above self.index.
        self.index = index
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def reached(self, index: int) -> None:
        """The state machine applied (or restored a snapshot) up to ``index``."""
        self.index = index
        waiting = self._waiting
        while waiting and waiting[0][0] <= index:
            _, _, future = heapq.heappop(waiting)
            if not future.done():
                future.set_result(None)

    async def wait(self, index: int) -> None:
        """Return once ``index`` is applied (at once if it is already)."""
        if index <= self.index:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (index, next(self._order), future))
        await future
