"""The watch history: the recent events of the applied log, bounded, shared by every watcher.

Each write command that changed the store made one revision; the RSM hands
this history that revision's changes, the store's journal of the command
(:meth:`WatchHistory.record`: ``(key, entry before, entry after)`` tuples,
cheap to keep; :func:`event_of` makes the events when a watcher reads them). Every replica
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
from collections.abc import Sequence

from kvraft.kv_protocol import (
    WATCH_EVENT_OVERHEAD_BYTES,
    KeyValue,
    WatchEvent,
    in_range,
    utf8_len,
    watch_event_bytes,
)
from kvraft.server.kvstore import Entry

# The most revisions one read looks at (matching or not), so a watcher of a
# rare key costs a bounded scan per poll; its cursor moves past what it scanned.
MAX_SCAN_REVISIONS = 10_000


Change = tuple[str, Entry | None, Entry | None]


def change_bytes(change: Change) -> int:
    """What one change counts toward the byte bounds, as its event does
    (:func:`~kvraft.kv_protocol.watch_event_bytes` with its previous value)."""
    key, before, after = change
    size = WATCH_EVENT_OVERHEAD_BYTES + utf8_len(key)
    if after is not None:
        size += utf8_len(after[0])
    if before is not None:
        size += utf8_len(before[0])
    return size


def event_of(revision: int, change: Change, prev_kv: bool) -> WatchEvent:
    """The event of one journaled change ``(key, before, after)`` at ``revision``.

    Built when a watcher reads it, not when it is applied: the apply loop only
    keeps the journal's tuples, which share the store's values.
    """
    key, before, after = change
    prev = None if before is None or not prev_kv else _key_value(key, before)
    if after is None:
        return WatchEvent("delete", KeyValue(key, "", 0, 0, revision, 0), prev, revision)
    return WatchEvent("put", _key_value(key, after), prev, revision)


def _key_value(key: str, entry: Entry) -> KeyValue:
    value, version, create, mod, lease = entry
    return KeyValue(key, value, version, create, mod, lease)


class WatchHistory:
    """Recent revisions' changes, bounded by count and bytes (see the module)."""

    def __init__(self, max_revisions: int, max_bytes: int, first_revision: int = 1) -> None:
        if max_revisions < 1 or max_bytes < 1:
            raise ValueError("the watch history needs room for one revision and one byte")
        self.max_revisions = max_revisions
        self.max_bytes = max_bytes
        self.first_revision = first_revision
        # Oldest first: (revision, its changes in the order made, their bytes).
        # Invariant: bytes == sum of the sizes; revisions ascending, all >= first_revision.
        self._revisions: deque[tuple[int, tuple[Change, ...], int]] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._revisions)

    def record(self, revision: int, changes: Sequence[Change]) -> None:
        """Keep ``revision``'s changes (revisions arrive in ascending order), then evict.

        A key changed twice in one command cannot happen (a txn writes each
        key once), so the journal's order is the events' order.
        """
        assert not self._revisions or revision > self._revisions[-1][0], revision
        size = sum(change_bytes(c) for c in changes)
        self._revisions.append((revision, tuple(changes), size))
        self.bytes += size
        while self._revisions and (
            len(self._revisions) > self.max_revisions or self.bytes > self.max_bytes
        ):
            self._drop_oldest()

    def compact(self, revision: int) -> None:
        """Drop every revision below ``revision``; a watch from below it is Compacted."""
        while self._revisions and self._revisions[0][0] < revision:
            self._drop_oldest()
        self.first_revision = max(self.first_revision, revision)

    def reset(self, first_revision: int) -> None:
        """Forget everything: the store was replaced (a snapshot); history starts here."""
        self._revisions.clear()
        self.bytes = 0
        self.first_revision = first_revision

    def _drop_oldest(self) -> None:
        revision, _, size = self._revisions.popleft()
        self.bytes -= size
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
        revisions = self._revisions
        i = bisect.bisect_left(revisions, next_revision, key=lambda r: r[0])
        scanned = 0
        while i < len(revisions) and scanned < MAX_SCAN_REVISIONS:
            revision, changes, _ = revisions[i]
            if revision != cursor:
                cursor, cursor_skip = revision, 0
            matched = 0
            for change in changes:
                if not in_range(change[0], start, end):
                    continue
                matched += 1
                if matched <= cursor_skip:
                    continue
                event = event_of(revision, change, prev_kv)
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
