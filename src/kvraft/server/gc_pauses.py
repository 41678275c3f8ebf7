"""The garbage collector's pauses: kept short, and seen by an operator when long.

A full (generation 2) collection walks every container object the process
holds, and a node holds one per log entry kept since its last snapshot: on
a 1M-key load each full collection stopped the event loop for 150-900 ms,
every 2-3 s, and every leader change of the load happened during one of the
leader's (benchmarks/memory_bench.py --keep, with the lines below).

So, at most :data:`TEND_INTERVAL_S` after each full collection, everything
the process holds is frozen (``gc.freeze``): what survived the collection
(all of it reachable then) and what was allocated since. Later full
collections walk only what is allocated after the freeze. Frozen objects are
still freed by reference counting, as log entries are when a snapshot
compacts the log; only reference cycles among them wait (those that become
garbage, and any frozen in the moments after the collection). When the node
holds half the log entries it held at the freeze (the log was compacted),
everything is unfrozen, so the next full collection, over a small heap
again, reclaims them: memory held by a cycle is bounded by one snapshot
interval. Freezing happens on the event loop (:meth:`tend`), never inside
the collector's callback.

Each collection of at least :data:`SLOW_COLLECTION_S` is one WARNING line
(how long, which generation), so a leader change can be matched with a
pause as "slow fsync" lines match a slow disk.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("kvraft.node")

# A pause at least this long is logged (the default election timeout is 150 ms).
SLOW_COLLECTION_S = 0.05
# How often the event loop applies the freezing policy.
TEND_INTERVAL_S = 0.1


class GcPauseWatch:
    """Times each collection and logs the slow ones; freezes after full ones (module)."""

    def __init__(
        self,
        node_id: int,
        *,
        held: Callable[[], int] = lambda: 0,
        slow_s: float = SLOW_COLLECTION_S,
        freeze: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``held()``: how many of the objects that dominate the heap the node holds
        now, in constant time (its log entries in memory)."""
        self.node_id = node_id
        self._held = held
        self.slow_s = slow_s
        self.freeze = freeze
        self._clock = clock
        self._started: float | None = None
        self.slow_collections = 0
        self.longest_s = 0.0
        self._freeze_due = False  # a full collection ended: freeze what survived it
        self._frozen = 0  # held() at the last freeze (0: nothing frozen by us)
        self.freezes = 0
        self.unfreezes = 0

    def tend(self) -> None:
        """On the event loop: freeze after a full collection; unfreeze once what was
        frozen has halved, as told by ``held()`` (constant time: ``gc.get_freeze_count``
        walks the frozen list, and calling it ten times a second took 8-13% of a
        leader's CPU)."""
        if self._freeze_due:
            self._freeze_due = False
            gc.freeze()
            self._frozen = max(1, self._held())
            self.freezes += 1
        elif self._frozen and self._held() <= self._frozen // 2:
            gc.unfreeze()
            self._frozen = 0
            self.unfreezes += 1

    async def run(self) -> None:
        """:meth:`tend` every :data:`TEND_INTERVAL_S`, until cancelled."""
        while True:
            await asyncio.sleep(TEND_INTERVAL_S)
            self.tend()

    def install(self) -> None:
        if self._on_collection not in gc.callbacks:
            gc.callbacks.append(self._on_collection)

    def uninstall(self) -> None:
        """Stop watching; unfreeze what this watch froze (a server stopped in a process
        that goes on, as in tests)."""
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)
        if self._frozen:
            gc.unfreeze()
            self._frozen = 0

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        if self._started is None:
            return
        elapsed = self._clock() - self._started
        self._started = None
        if self.freeze and info.get("generation") == 2:
            self._freeze_due = True
        self.longest_s = max(self.longest_s, elapsed)
        if elapsed >= self.slow_s:
            self.slow_collections += 1
            log.warning(
                "n%d slow garbage collection: %.0f ms (generation %d, %d collected)",
                self.node_id,
                elapsed * 1000,
                info.get("generation", -1),
                info.get("collected", 0),
            )
