"""The ``watch.poll`` RPC: a long poll on this replica's watch history.

A poll is a read of this replica's own history (no log entry, nothing kept
in a session): it answers at once with the events after the watcher's
cursor, or, if there are none yet, waits until the history changes or the
poll's ``wait_s`` runs out, then answers (an empty batch is an answer: the
watcher polls again). Any replica serves polls — a follower serves the
revisions it has applied, which is all a stream needs: the cursor is the
watcher's, so resuming on another replica continues exactly after the last
event delivered (``docs/data-model.md``, "Watch").

Bounds: the reply's events and bytes (:data:`~kvraft.kv_protocol.MAX_WATCH_EVENTS`,
:data:`~kvraft.kv_protocol.MAX_WATCH_REPLY_BYTES`), the wait
(:data:`~kvraft.kv_protocol.MAX_WATCH_WAIT_S`), and the polls waiting at
once on this server (``max_waiting``, :data:`DEFAULT_MAX_WAITING_POLLS`):
over it a poll is refused with Busy (the client backs off and retries).
Nothing is kept per watcher between polls.
"""

from __future__ import annotations

import asyncio
import logging

from kvraft.errors import Busy
from kvraft.kv_protocol import (
    MAX_WATCH_REPLY_BYTES,
    WatchBatch,
    WatchCompactedResult,
    WatchPoll,
)
from kvraft.server.rsm import RSM

log = logging.getLogger("kvraft.watch")

DEFAULT_MAX_WAITING_POLLS = 1024


class WatchPolls:
    """Answers ``watch.poll`` from an RSM's history; counts the polls waiting."""

    def __init__(self, rsm: RSM, max_waiting: int = DEFAULT_MAX_WAITING_POLLS) -> None:
        self.rsm = rsm
        self.max_waiting = max_waiting
        self.waiting = 0
        self.refused = 0

    async def poll(self, request: WatchPoll) -> WatchBatch | WatchCompactedResult:
        """The events after the cursor, as soon as there are any or after ``wait_s``."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + request.wait_s
        next_revision, skip = request.next_revision, request.skip
        if next_revision == 0:
            next_revision, skip = self.rsm.store.revision + 1, 0
        waited = False
        while True:
            history = self.rsm.history
            if next_revision < history.first_revision:
                return WatchCompactedResult(history.first_revision)
            events, cursor, cursor_skip = history.read(
                request.start,
                request.end,
                next_revision,
                skip,
                max_events=request.max_events,
                max_bytes=MAX_WATCH_REPLY_BYTES,
                prev_kv=request.prev_kv,
            )
            remaining = give_up - loop.time()
            if events or remaining <= 0:
                return WatchBatch(tuple(events), cursor, cursor_skip, self.rsm.store.revision)
            # Nothing matched: move the cursor past what was scanned, then wait.
            next_revision, skip = cursor, cursor_skip
            if self.waiting >= self.max_waiting:
                if waited:  # it had its turn: answer what it has rather than refuse
                    return WatchBatch((), cursor, cursor_skip, self.rsm.store.revision)
                self.refused += 1
                raise Busy(
                    f"n{self.rsm.node_id}: {self.waiting} watch polls waiting"
                    f" (limit {self.max_waiting})"
                )
            self.waiting += 1
            waited = True
            try:
                await self.rsm.wait_for_change(remaining)
            finally:
                self.waiting -= 1
