"""The storage interface the driver persists Ready batches through, and an in-memory twin.

The core never calls storage (it is sans-I/O); the driver loads a
:class:`PersistentState` at start and saves each Ready. ``MemoryStorage`` is
what the simulator uses: "crash" there means "lose everything not saved".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from kvraft.raft.messages import Entry
from kvraft.raft.ready import HardState, PersistentState, Snapshot


class Storage(Protocol):
    def load(self) -> PersistentState:
        """Everything persisted so far."""

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
    ) -> None:
        """Persist one Ready atomically and durably (see :class:`Ready` for the meaning)."""

    def stage_snapshot(self, snapshot: Snapshot) -> None:
        """Prepare a locally taken snapshot for :meth:`compact` (e.g. write its data).

        May be called from any thread, overlapping the other calls: it is how a
        driver keeps the slow part of storing a large snapshot off the thread
        that persists Readys. It changes nothing a restart would see.
        """

    def compact(self, snapshot: Snapshot) -> None:
        """Persist a locally taken snapshot and drop log entries up to its index, atomically."""

    def size_bytes(self) -> int:
        """Approximate bytes of persisted Raft state (log + snapshot), for the threshold."""

    def close(self) -> None:
        """Release files; the storage is unusable afterwards."""


class MemoryStorage:
    """Storage in a few Python objects, for tests and the simulator."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []  # contiguous after the snapshot
        self.saves = 0

    def _offset(self) -> int:
        return self.snapshot.index if self.snapshot is not None else 0

    def load(self) -> PersistentState:
        return PersistentState(self.hard_state, self.snapshot, tuple(self.entries))

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
    ) -> None:
        self.saves += 1
        if snapshot is not None:
            self.snapshot = snapshot
            self.entries = list(entries)
        elif entries:
            first = entries[0].index
            keep = first - self._offset() - 1
            assert 0 <= keep <= len(self.entries), (first, self._offset(), len(self.entries))
            del self.entries[keep:]
            self.entries.extend(entries)
        if hard_state is not None:
            self.hard_state = hard_state

    def stage_snapshot(self, snapshot: Snapshot) -> None:
        pass  # nothing slow to do ahead of compact()

    def compact(self, snapshot: Snapshot) -> None:
        drop = snapshot.index - self._offset()
        if drop <= 0:
            return
        del self.entries[:drop]
        self.snapshot = snapshot

    def size_bytes(self) -> int:
        size = len(self.snapshot.data) if self.snapshot is not None else 0
        return size + sum(32 + len(e.command or b"") for e in self.entries)

    def close(self) -> None:
        pass
