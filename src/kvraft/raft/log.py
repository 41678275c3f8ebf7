"""The in-memory Raft log: a snapshot boundary followed by the entries after it.

Seam: the core decides *what* enters the log (a leader's appends, a follower's
repairs, an installed snapshot); this module keeps the indexes straight and
remembers how far the driver has been handed the entries (``unstable``) and how
far it has persisted them (``persisted``), which is what the Ready/advance
handshake and the leader's own vote toward commit need.

Index 0 is a sentinel with term 0: a log that starts from scratch has
``snapshot_index == snapshot_term == 0``.

The entries are kept as plain ``(term, command)`` tuples, not as
:class:`Entry` objects, and an Entry is built when one is handed out. The
garbage collector stops tracking a tuple of untracked values (ints, bytes)
the first time it sees one, while every Entry stays tracked: a log of
350,000 Entries cost each full collection 67-71 ms of walking them, as tuples
4-5 ms (benchmarks/results/memory-1m.md), and a node holds that many between
two snapshots of a large store.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Iterable, Sequence
from typing import NamedTuple, TypeAlias

from kvraft.raft.messages import Entry

# conflict_term of a refusal when the follower has no entry at prev_log_index
# (real entries have terms >= 1; index 0 is a sentinel of term 0).
NO_TERM = 0


class AppendResult(NamedTuple):
    """The follower's answer to an AppendEntries (Figure 2 plus fast backtracking).

    On success, ``match_index`` is the last index known to match the leader's
    log. On refusal, ``conflict_term`` is our term at ``prev_log_index`` (or
    NO_TERM if our log is too short) and ``conflict_index`` the first index of
    that term's run (or our log's end + 1): the leader can skip it whole.
    """

    success: bool
    match_index: int = 0
    conflict_index: int = 0
    conflict_term: int = NO_TERM


# One entry as the log holds it: (term, command); its index is its position.
_Row: TypeAlias = tuple[int, bytes | None]
_term_of = operator.itemgetter(0)


def _row(entry: Entry) -> _Row:
    return (entry.term, entry.command)


class RaftLog:
    """Entries ``first_index..last_index`` after a snapshot at ``snapshot_index``.

    Invariants: entries are contiguous and start at ``snapshot_index + 1``;
    their terms never decrease (every Raft log is a prefix of some leader's
    log, and a leader only appends entries of its current term);
    ``persisted <= last_index`` and ``unstable <= last_index + 1``.
    """

    def __init__(self, snapshot_index: int, snapshot_term: int, entries: Sequence[Entry]) -> None:
        self.snapshot_index = snapshot_index
        self.snapshot_term = snapshot_term
        for offset, entry in enumerate(entries):
            if entry.index != snapshot_index + 1 + offset:
                raise ValueError(
                    f"log entries not contiguous after snapshot {snapshot_index}: "
                    f"entry {offset} has index {entry.index}"
                )
        self._entries: list[_Row] = [_row(entry) for entry in entries]
        # Everything loaded at start is on disk already.
        # Invariant: entries at indexes >= unstable have not been handed out in a Ready.
        self.unstable = self.last_index + 1
        # Invariant: entries up to persisted are on disk exactly as they are here.
        self.persisted = self.last_index

    # ------------------------------------------------------------------ reading

    @property
    def first_index(self) -> int:
        return self.snapshot_index + 1

    @property
    def last_index(self) -> int:
        return self.snapshot_index + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1][0] if self._entries else self.snapshot_term

    def __len__(self) -> int:
        return len(self._entries)

    def term(self, index: int) -> int | None:
        """The term of the entry at ``index``; None if compacted away or beyond the end."""
        if index == self.snapshot_index:
            return self.snapshot_term
        offset = index - self.snapshot_index - 1
        if 0 <= offset < len(self._entries):
            return self._entries[offset][0]
        return None

    def entry(self, index: int) -> Entry | None:
        offset = index - self.snapshot_index - 1
        if 0 <= offset < len(self._entries):
            term, command = self._entries[offset]
            return Entry(term=term, index=index, command=command)
        return None

    def _built(self, start: int, stop: int) -> list[Entry]:
        """Entries at positions ``start..stop-1`` of the log, as Entry objects."""
        first = self.snapshot_index + 1 + start
        return [
            Entry(term=term, index=first + k, command=command)
            for k, (term, command) in enumerate(self._entries[start:stop])
        ]

    def between(self, lo: int, hi: int) -> list[Entry]:
        """Entries ``lo..hi`` inclusive; the caller keeps both inside the log."""
        base = self.snapshot_index + 1
        assert base <= lo and hi <= self.last_index, (lo, hi, base, self.last_index)
        return self._built(lo - base, hi - base + 1)

    def batch(self, lo: int, max_count: int, max_bytes: int) -> tuple[Entry, ...]:
        """Entries from ``lo`` on, at most ``max_count`` of them and ``max_bytes`` of commands.

        Always at least one entry when ``lo`` is in the log, however large, so a
        big command cannot stall replication.
        """
        base = self.snapshot_index + 1
        start = lo - base
        if start < 0 or start >= len(self._entries):
            return ()
        stop = min(len(self._entries), start + max(1, max_count))
        size = 0
        for pos in range(start, stop):
            command = self._entries[pos][1]
            size += len(command) if command is not None else 0
            if size > max_bytes and pos > start:
                stop = pos
                break
        return tuple(self._built(start, stop))

    def all_entries(self) -> list[Entry]:
        return self._built(0, len(self._entries))

    def first_index_of_term_run(self, index: int) -> int:
        """The first index of the run of entries that share the term at ``index``.

        Bounded below by ``first_index``: what the snapshot holds is unknown.
        """
        term = self.term(index)
        assert term is not None, index
        pos = bisect.bisect_left(self._entries, term, key=_term_of)
        return self.snapshot_index + 1 + pos

    def last_index_of_term(self, term: int) -> int | None:
        """The last index holding an entry of ``term``, or None if the log has none."""
        pos = bisect.bisect_right(self._entries, term, key=_term_of)
        if pos > 0 and self._entries[pos - 1][0] == term:
            return self.snapshot_index + pos
        if pos == 0 and self.snapshot_term == term and self.snapshot_index > 0:
            return self.snapshot_index
        return None

    # ------------------------------------------------------------------ changing

    def try_append(
        self, prev_index: int, prev_term: int, entries: Sequence[Entry], commit_index: int
    ) -> AppendResult:
        """A follower's AppendEntries consistency check and repair (Raft §5.3, Figure 2).

        Entries up to ``commit_index`` are committed, hence in every later
        leader's log (Leader Completeness, §5.4): they are skipped, never
        rewritten, and the check starts after them.
        """
        if prev_index < commit_index:
            skip = commit_index - prev_index
            if skip > len(entries):
                return AppendResult(True, commit_index)
            claimed_term = entries[skip - 1].term  # the message's entry at commit_index
            if claimed_term != self.term(commit_index):
                # Contradicts an entry we know is committed: no leader sends that.
                return AppendResult(False, conflict_index=commit_index + 1)
            entries = entries[skip:]
            prev_index, prev_term = commit_index, claimed_term
        if prev_index > self.last_index:
            return AppendResult(False, conflict_index=self.last_index + 1)
        term_at_prev = self.term(prev_index)
        assert term_at_prev is not None  # prev_index >= commit_index >= snapshot_index
        if term_at_prev != prev_term:
            run_start = max(self.first_index_of_term_run(prev_index), commit_index + 1)
            return AppendResult(False, conflict_index=run_start, conflict_term=term_at_prev)
        # Rules 3 and 4: delete a conflicting entry and all that follow it;
        # append any new entries not already in the log.
        for pos, entry in enumerate(entries):
            if self.term(entry.index) != entry.term:
                self.truncate_and_append(entries[pos:])
                break
        return AppendResult(True, prev_index + len(entries))

    def append(self, entry: Entry) -> None:
        """A leader's append at the end of the log."""
        assert entry.index == self.last_index + 1, (entry.index, self.last_index)
        self._entries.append(_row(entry))

    def truncate_and_append(self, entries: Sequence[Entry]) -> None:
        """Replace everything from ``entries[0].index`` on by ``entries`` (a follower's repair)."""
        first = entries[0].index
        assert self.first_index <= first <= self.last_index + 1, (first, self.first_index)
        del self._entries[first - self.snapshot_index - 1 :]
        self._entries.extend(_row(entry) for entry in entries)
        # What was handed out or persisted from ``first`` on is superseded.
        self.unstable = min(self.unstable, first)
        self.persisted = min(self.persisted, first - 1)

    def compact(self, index: int, term: int) -> None:
        """Drop entries up to ``index`` (already applied and persisted)."""
        assert self.snapshot_index < index <= self.last_index, (index, self.snapshot_index)
        assert self.term(index) == term, (index, term, self.term(index))
        del self._entries[: index - self.snapshot_index]
        self.snapshot_index = index
        self.snapshot_term = term
        self.unstable = max(self.unstable, index + 1)
        self.persisted = max(self.persisted, index)

    def install(self, index: int, term: int) -> int:
        """Make the log start after a received snapshot at ``index``; return how many entries stay.

        Raft §7: if the log holds an entry at ``index`` with ``term``, keep the
        entries after it; otherwise the snapshot supersedes the whole log.
        """
        if self.term(index) == term:
            del self._entries[: index - self.snapshot_index]
        else:
            self._entries = []
        self.snapshot_index = index
        self.snapshot_term = term
        # The Ready that carries the snapshot carries every entry kept, so the
        # persisted log is rewritten as a whole (see Ready.snapshot).
        self.unstable = index + 1
        self.persisted = min(max(self.persisted, index), self.last_index)
        return len(self._entries)

    # --------------------------------------------------------- Ready handshake

    def unstable_entries(self) -> list[Entry]:
        """Entries not yet handed out in a Ready."""
        start = max(self.unstable, self.first_index) - self.snapshot_index - 1
        return self._built(start, len(self._entries))

    def mark_handed_out(self) -> None:
        self.unstable = self.last_index + 1

    def stable_to(self, entries: Iterable[Entry]) -> None:
        """The driver persisted ``entries`` (one Ready's): advance ``persisted``.

        Only entries still in the log with the same term count: a truncation
        after the Ready was handed out supersedes what it wrote. By the Log
        Matching property, a matching last entry vouches for those before it.
        """
        for entry in reversed(list(entries)):
            if entry.index <= self.persisted:
                return
            if self.term(entry.index) == entry.term:
                self.persisted = entry.index
                return
