"""The watch history: the recent events of the applied log, bounded, shared by every watcher.

Each write command that changed the store made one revision; the RSM hands
this history that revision's events (:meth:`WatchHistory.record`), built
from the store's journal of the command (:func:`events_of`). Every replica
applies the same log, so every replica's history holds the same events for
the revisions it has applied and kept; watchers read it with
:meth:`WatchHistory.read` through a cursor they keep themselves, so the
server holds nothing per watcher and a slow watcher holds up nobody.

Bounds: at most ``max_revisions`` revisions and ``max_bytes`` bytes
(:func:`~kvraft.kv_protocol.watch_event_bytes` per event: key, value, the
previous value, and an overhead); past either the oldest revisions are
dropped (the newest too, if it alone is over the byte bound).
``first_revision`` is the oldest revision a watch can start from without a
gap: every revision at or above it that has been applied is here. It moves
up on eviction, on :meth:`compact` (the ``compact`` command, through the
log) and on :meth:`reset` (a restart or snapshot install: the history then
starts after the snapshot's revision). A cursor below it is Compacted.
"""

from __future__ import annotations

import bisect
from collections import deque

from kvraft.kv_protocol import KeyValue, WatchEvent, in_range, watch_event_bytes
from kvraft.server.kvstore import Entry

# The most revisions one read looks at (matching or not), so a watcher of a
# rare key costs a bounded scan per poll; its cursor moves past what it scanned.
MAX_SCAN_REVISIONS = 10_000


def events_of(
    revision: int, changes: list[tuple[str, Entry | None, Entry | None]]
) -> tuple[WatchEvent, ...]:
    """The events of one revision from the store's journal ``(key, before, after)``.

    A key changed twice in one command cannot happen (a txn writes each key
    once), so the journal's order is the events' order.
    """
    events = []
    for key, before, after in changes:
        prev = None if before is None else _key_value(key, before)
        if after is None:
            events.append(
                WatchEvent("delete", KeyValue(key, "", 0, 0, revision, 0), prev, revision)
            )
        else:
            events.append(WatchEvent("put", _key_value(key, after), prev, revision))
    return tuple(events)


def _key_value(key: str, entry: Entry) -> KeyValue:
    value, version, create, mod, lease = entry
    return KeyValue(key, value, version, create, mod, lease)


class WatchHistory:
    """Recent revisions' events, bounded by count and bytes (see the module)."""

    def __init__(self, max_revisions: int, max_bytes: int, first_revision: int = 1) -> None:
        if max_revisions < 1 or max_bytes < 1:
            raise ValueError("the watch history needs room for one revision and one byte")
        self.max_revisions = max_revisions
        self.max_bytes = max_bytes
        self.first_revision = first_revision
        # Parallel deques, oldest first: revision, its events, their bytes.
        # Invariant: bytes == sum(self._sizes); revisions ascending, all >= first_revision.
        self._revisions: deque[int] = deque()
        self._events: deque[tuple[WatchEvent, ...]] = deque()
        self._sizes: deque[int] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._revisions)

    def record(self, revision: int, events: tuple[WatchEvent, ...]) -> None:
        """Keep ``revision``'s events (revisions arrive in ascending order), then evict."""
        assert not self._revisions or revision > self._revisions[-1], revision
        size = sum(watch_event_bytes(e) for e in events)
        self._revisions.append(revision)
        self._events.append(events)
        self._sizes.append(size)
        self.bytes += size
        while self._revisions and (
            len(self._revisions) > self.max_revisions or self.bytes > self.max_bytes
        ):
            self._drop_oldest()

    def compact(self, revision: int) -> None:
        """Drop every revision below ``revision``; a watch from below it is Compacted."""
        while self._revisions and self._revisions[0] < revision:
            self._drop_oldest()
        self.first_revision = max(self.first_revision, revision)

    def reset(self, first_revision: int) -> None:
        """Forget everything: the store was replaced (a snapshot); history starts here."""
        self._revisions.clear()
        self._events.clear()
        self._sizes.clear()
        self.bytes = 0
        self.first_revision = first_revision

    def _drop_oldest(self) -> None:
        revision = self._revisions.popleft()
        self._events.popleft()
        self.bytes -= self._sizes.popleft()
        self.first_revision = max(self.first_revision, revision + 1)

    def read(
        self,
        start: str,
        end: str,
        next_revision: int,
        skip: int,
        *,
        max_events: int,
        max_bytes: int,
        prev_kv: bool,
    ) -> tuple[list[WatchEvent], int, int]:
        """Events of ``[start, end)`` from the cursor, and the cursor after them.

        The cursor ``(next_revision, skip)``: revisions from ``next_revision``
        on, the first ``skip`` matching events of ``next_revision`` left out.
        At most ``max_events`` events and ``max_bytes`` bytes (one event at
        least), and :data:`MAX_SCAN_REVISIONS` revisions looked at. The
        caller checks ``next_revision >= first_revision`` first.
        """
        events: list[WatchEvent] = []
        size = 0
        cursor, cursor_skip = next_revision, skip
        i = bisect.bisect_left(self._revisions, next_revision)
        scanned = 0
        while i < len(self._revisions) and scanned < MAX_SCAN_REVISIONS:
            revision = self._revisions[i]
            if revision != cursor:
                cursor, cursor_skip = revision, 0
            matched = 0
            for event in self._events[i]:
                if not in_range(event.kv.key, start, end):
                    continue
                matched += 1
                if matched <= cursor_skip:
                    continue
                if not prev_kv and event.prev_kv is not None:
                    event = WatchEvent(event.type, event.kv, None, event.revision)
                event_size = watch_event_bytes(event)
                if events and (len(events) >= max_events or size + event_size > max_bytes):
                    return events, cursor, cursor_skip
                events.append(event)
                size += event_size
                cursor_skip = matched
            cursor, cursor_skip = revision + 1, 0
            i += 1
            scanned += 1
        return events, cursor, cursor_skip
