"""Raft-like storage call sequences, shared by the equivalence and crash tests.

A :class:`Workload` keeps a MemoryStorage as its model and produces the calls a
correct Raft driver could make next: appends (with commit advances), new terms
and votes, truncating overwrites by a new leader, local compactions, and
snapshot installs that replace the log. It applies each call to its model
before returning it, so after ``next_op`` the model *is* the expected state.
Two workloads built from the same state and fed the same ``random.Random``
produce the same calls: that is how the crash test's parent knows what its
killed child was doing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from kvraft.raft.messages import Entry
from kvraft.raft.ready import HardState, PersistentState, Snapshot
from kvraft.raft.storage import MemoryStorage, Storage


@dataclass(frozen=True, slots=True)
class Save:
    hard_state: HardState | None
    entries: tuple[Entry, ...]
    snapshot: Snapshot | None


@dataclass(frozen=True, slots=True)
class Compact:
    snapshot: Snapshot
    staged: bool = False  # stage_snapshot() first, as the node does; else compact() writes it


Op = Save | Compact


def apply(storage: Storage, op: Op) -> None:
    match op:
        case Save(hard_state, entries, snapshot):
            storage.save(hard_state, entries, snapshot)
        case Compact(snapshot, staged):
            if staged:
                storage.stage_snapshot(snapshot)
            storage.compact(snapshot)


def memory_from(state: PersistentState) -> MemoryStorage:
    model = MemoryStorage()
    model.hard_state = state.hard_state
    model.snapshot = state.snapshot
    model.entries = list(state.entries)
    return model


def blob(rng: random.Random, size: int) -> bytes:
    """``size`` pseudo-random bytes, cheaply (a random 4 KiB block repeated)."""
    block = rng.randbytes(min(size, 4096))
    return (block * (size // max(len(block), 1) + 1))[:size]


class Workload:
    """Generates valid calls from ``start``; ``snapshot_bytes`` bounds snapshot sizes."""

    def __init__(self, start: PersistentState, *, snapshot_bytes: tuple[int, int]) -> None:
        self.model = memory_from(start)
        self.snapshot_bytes = snapshot_bytes

    # -- views of the model --------------------------------------------------

    @property
    def offset(self) -> int:
        return self.model.snapshot.index if self.model.snapshot is not None else 0

    @property
    def last(self) -> int:
        return self.offset + len(self.model.entries)

    def term_at(self, index: int) -> int:
        if index == self.offset:
            return self.model.snapshot.term if self.model.snapshot is not None else 0
        return self.model.entries[index - self.offset - 1].term

    # -- generation ----------------------------------------------------------

    def next_op(self, rng: random.Random) -> Op:
        kind = rng.choices(
            ["append", "elect", "commit", "overwrite", "compact", "install", "noop"],
            weights=[40, 8, 10, 10, 12, 6, 2],
        )[0]
        op = getattr(self, f"_{kind}")(rng)
        apply(self.model, op)
        return op

    def _command(self, rng: random.Random) -> bytes | None:
        return rng.choice([None, b"", rng.randbytes(rng.randint(1, 120))])

    def _entries(self, rng: random.Random, first: int, term: int) -> tuple[Entry, ...]:
        n = rng.choice([1, 1, 2, 3, 8, 64])
        return tuple(
            Entry(term=term, index=i, command=self._command(rng)) for i in range(first, first + n)
        )

    def _append(self, rng: random.Random) -> Op:
        hs = self.model.hard_state
        term = max(hs.current_term, 1)
        entries = self._entries(rng, self.last + 1, term)
        commit = hs.commit_index
        if rng.random() < 0.5:
            commit = rng.randint(commit, entries[-1].index)
        new_hs = HardState(term, hs.voted_for, commit)
        return Save(new_hs if new_hs != hs or rng.random() < 0.5 else None, entries, None)

    def _elect(self, rng: random.Random) -> Op:
        hs = self.model.hard_state
        vote = rng.choice([None, 0, 1, 2])
        return Save(HardState(hs.current_term + 1, vote, hs.commit_index), (), None)

    def _commit(self, rng: random.Random) -> Op:
        hs = self.model.hard_state
        commit = rng.randint(hs.commit_index, self.last)
        return Save(HardState(hs.current_term, hs.voted_for, commit), (), None)

    def _overwrite(self, rng: random.Random) -> Op:
        """A new leader's entries replace an uncommitted suffix (Raft §5.3)."""
        hs = self.model.hard_state
        low = max(self.offset, hs.commit_index) + 1
        if low > self.last:
            return self._append(rng)
        term = hs.current_term + 1
        entries = self._entries(rng, rng.randint(low, self.last), term)
        return Save(HardState(term, rng.choice([None, 1]), hs.commit_index), entries, None)

    def _snapshot_data(self, rng: random.Random) -> bytes:
        return blob(rng, rng.randint(*self.snapshot_bytes))

    def _compact(self, rng: random.Random) -> Op:
        """The state machine snapshotted at some applied (committed) index."""
        commit = self.model.hard_state.commit_index
        if commit <= self.offset:
            return self._commit(rng)
        index = rng.randint(self.offset + 1, commit)
        snapshot = Snapshot(index, self.term_at(index), self._snapshot_data(rng))
        return Compact(snapshot, staged=rng.random() < 0.5)

    def _install(self, rng: random.Random) -> Op:
        """A leader's snapshot beyond our commit index replaces the whole log."""
        hs = self.model.hard_state
        term = hs.current_term + rng.choice([0, 1])
        index = rng.randint(hs.commit_index + 1, self.last + 10)
        old_term = self.model.snapshot.term if self.model.snapshot is not None else 0
        snap_term = rng.randint(max(old_term, 1), max(term, 1))
        snap = Snapshot(index, snap_term, self._snapshot_data(rng))
        entries = self._entries(rng, index + 1, max(term, 1)) if rng.random() < 0.5 else ()
        commit = rng.randint(index, index + len(entries))
        new_hs = HardState(max(term, 1), hs.voted_for, commit)
        return Save(new_hs, entries, snap)

    def _noop(self, rng: random.Random) -> Op:
        return Save(rng.choice([None, self.model.hard_state]), (), None)
