"""SqliteStorage: the Raft log, hard state and snapshot of one node, durable in SQLite.

It implements :class:`kvraft.raft.storage.Storage` and behaves exactly like
:class:`~kvraft.raft.storage.MemoryStorage` on every valid call sequence (the
tests check them against each other), with these additions:

- **Durability**: WAL journal with ``synchronous=FULL``. Each ``save()`` is one
  transaction, so a whole Ready (snapshot + hard state + a batch of entries)
  costs one commit and one fsync; ``compact()`` records the snapshot and drops
  the log prefix in one transaction. A SIGKILL at any instant leaves the old or
  the new state, never a mix.
- **Snapshots beside the database**: a snapshot's data is a file of its own
  (:mod:`kvraft.storage.snapshot_files`), and the database row naming it is
  the commit point. :meth:`SqliteStorage.stage_snapshot` writes that file from
  any thread, *while saves go on*, so that the only work a local snapshot puts
  on the storage thread is a small transaction (measured in
  ``benchmarks/results/snapshot.md``).
- **Dead rows, deleted a batch at a time**: log rows at or below the
  snapshot's index are dead. Neither ``compact()`` nor an installed snapshot
  deletes them (deleting a 100 MB prefix takes a second, and every save would
  wait for it); each later ``save()`` deletes up to ``DEAD_ROWS_PER_SAVE`` of
  them in its own transaction, and loading reads only the rows after the
  snapshot.
- **Refusal**: opening a data dir of another node or cluster, of a newer
  format, or with corrupt contents raises :class:`kvraft.errors.StorageError`
  (see :mod:`kvraft.storage.schema` and :mod:`kvraft.storage.records`).
- **Misuse is refused before anything is written**: a batch that would leave a
  gap, decreasing terms or a commit index beyond the log raises ValueError;
  persisting it would only make the next start refuse the store.

Threading: the driver calls ``save``/``compact`` from one worker thread, and
``open``/``load``/``close`` from the event loop before or after. These calls
must never overlap: a call made while another is running raises RuntimeError
(a lock taken without waiting detects it). ``stage_snapshot`` touches only its
own new file and may run in any thread at any time, overlapping all of them
(``close`` makes a running one stop and remove its file). ``size_bytes`` reads
one int and is safe from any thread at any time.

Timing (for ``kvraft_disk_wal_fsync_duration_seconds``): ``on_commit_s``, if
set, is called on the storage thread with the seconds each save's
transaction took from its first statement through its commit, which in WAL
mode with ``synchronous=FULL`` is where the fsync happens: one
``perf_counter`` pair per save (per Ready), not per entry.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final

from kvraft.errors import StorageError, one_line
from kvraft.raft import membership
from kvraft.raft.membership import Membership
from kvraft.raft.messages import MAX_RAFT_INT, Entry
from kvraft.raft.ready import HardState, PersistentState, Snapshot
from kvraft.storage import schema, snapshot_files
from kvraft.storage.records import (
    SINGLE_ROW_ID,
    CorruptRow,
    LoadedState,
    config_crc,
    entry_crc,
    entry_size,
    hard_state_crc,
    read_state,
)
from kvraft.storage.snapshot_files import SnapshotFile

_LogRow = tuple[int, int, bytes | None, int]  # idx, term, command, crc

# Dead log rows (at or below the snapshot) each save deletes along the way. At
# 1 KB per command, 1,000 rows cost a save ~3 ms; a 100,000-entry prefix is
# gone after 100 saves.
DEAD_ROWS_PER_SAVE: Final = 1000

# The seed of a store made for a node that joins a running cluster: no member,
# so it never campaigns before a leader has sent it the configuration.
_NO_SEED: Final = Membership(frozenset())


class SqliteStorage:
    """Durable Raft state in ``<data_dir>/raft.db``; create with :meth:`open`."""

    def __init__(self, conn: sqlite3.Connection, db_path: Path, loaded: LoadedState) -> None:
        """Internal: use :meth:`open`, which checks the store before building this."""
        self._conn: sqlite3.Connection | None = conn
        self._path = db_path
        self._dir = db_path.parent
        self._busy = threading.Lock()
        # Set by close(): a stage_snapshot still writing stops and removes its file.
        self._closing = threading.Event()
        # The snapshot stage_snapshot wrote last and its file, until compact() takes it.
        # One slot: a driver takes one snapshot at a time, and a newer one supersedes it.
        self._staged: tuple[Snapshot, SnapshotFile] | None = None
        self._staged_lock = threading.Lock()
        # The file the snapshot row names (None: no snapshot stored).
        self._snapshot_file = loaded.snapshot_file
        self._failed: str | None = None  # why the store is unusable after a failed write
        self._seed = loaded.seed
        state = loaded.state
        self._hard_state = state.hard_state
        self._offset = state.snapshot.index if state.snapshot is not None else 0
        self._offset_term = state.snapshot.term if state.snapshot is not None else 0
        # Invariant: no log row below _lowest_row; rows up to _offset are dead.
        self._lowest_row = loaded.lowest_row if loaded.lowest_row is not None else self._offset + 1
        # Invariant: _terms[i], _sizes[i] describe stored log entry _offset + 1 + i.
        self._terms = loaded.terms
        self._sizes = loaded.sizes
        self._snapshot_bytes = len(state.snapshot.data) if state.snapshot is not None else 0
        # Invariant: _log_bytes == sum(_sizes); kept by the writes, so no call sums it.
        self._log_bytes = sum(self._sizes)
        # Invariant: _size_bytes == _snapshot_bytes + _log_bytes (one int: readable anywhere).
        self._size_bytes = self._snapshot_bytes + self._log_bytes
        # open() had to read everything to check it; the first load() hands that
        # over instead of reading it again, and drops this reference.
        self._unclaimed: PersistentState | None = state
        # Called with each save's transaction time (see the module docstring); None: off.
        self.on_commit_s: Callable[[float], None] | None = None

    @classmethod
    def open(
        cls, data_dir: Path, *, cluster_id: str, node_id: int, seed: Membership | None = None
    ) -> SqliteStorage:
        """Open (creating if new) the store of node ``node_id`` of ``cluster_id`` in ``data_dir``.

        ``seed`` is used only when the store is created: the configuration it
        starts from (the voters ``--peers`` names at bootstrap; None or an
        empty one for a node that joins a running cluster). An existing store
        keeps the seed it was created with, whatever ``seed`` says now: see
        :attr:`seed`.

        Raises StorageError, with a one-line message naming the file, if the
        store belongs to another node or cluster, has a newer format, is in use
        by another process, or is corrupt in any way it can detect.
        """
        data_dir = Path(data_dir)
        db_path = data_dir / schema.DB_FILENAME
        try:
            created = not data_dir.exists()
            data_dir.mkdir(parents=True, exist_ok=True)
            if created:  # the new directory's own name must survive a power loss too
                schema.fsync_path(data_dir.parent)
            if not db_path.exists():
                schema.create_database(
                    db_path,
                    cluster_id=cluster_id,
                    node_id=node_id,
                    seed=membership.encode(seed if seed is not None else _NO_SEED),
                )
        except (OSError, sqlite3.Error) as e:
            raise StorageError(f"{data_dir}: cannot create a store: {one_line(e)}") from e
        conn = schema.connect(db_path, cluster_id=cluster_id, node_id=node_id)
        try:
            loaded = read_state(conn, functools.partial(snapshot_files.read, data_dir))
            # Only now that the state checks out: a refused store is left untouched.
            snapshot_files.remove_unreferenced(data_dir, keep=loaded.snapshot_file)
        except CorruptRow as e:
            conn.close()
            raise StorageError(f"{db_path}: corrupt: {e}") from None
        except sqlite3.DatabaseError as e:
            conn.close()
            raise StorageError(f"{db_path}: corrupt: {one_line(e)}") from None
        except OSError as e:
            conn.close()
            raise StorageError(f"{data_dir}: cannot clean up: {one_line(e)}") from None
        return cls(conn, db_path, loaded)

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def seed(self) -> Membership:
        """The configuration written when the store was created (no voters: made to join).

        The node's configuration until its log or snapshot holds one; never
        re-read from ``--peers``, which after creation only says how to reach
        members (addresses), not who they are.
        """
        return self._seed

    # -- the Storage protocol ------------------------------------------------

    def load(self) -> PersistentState:
        """Everything persisted so far, checked as on open; the log follows the snapshot."""
        with self._exclusive() as conn:
            if self._unclaimed is not None:
                state, self._unclaimed = self._unclaimed, None
                return state
            try:
                return read_state(conn, functools.partial(snapshot_files.read, self._dir)).state
            except (CorruptRow, sqlite3.DatabaseError) as e:
                raise StorageError(f"{self._path}: corrupt: {one_line(e)}") from None

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
    ) -> None:
        """Persist one Ready in one fsynced transaction (see :class:`kvraft.raft.ready.Ready`).

        ``snapshot``: the stored log is replaced by it followed by ``entries``.
        Otherwise ``entries`` are appended, first deleting stored entries from
        ``entries[0].index`` on. ``hard_state`` replaces the stored one. Raises
        ValueError, writing nothing, if the result would break the log's
        invariants; StorageError if the database write fails (the store is then
        unusable: restart and reload).
        """
        with self._exclusive() as conn:
            if snapshot is None and not entries and hard_state in (None, self._hard_state):
                return  # nothing to persist
            keep, rows = self._check_save(hard_state, entries, snapshot)
            new_hard_state = hard_state if hard_state is not None else self._hard_state
            # A leader's snapshot: the follower waits for it anyway, so it is written here.
            file = self._write_snapshot_file(snapshot) if snapshot is not None else None
            began = time.perf_counter()
            with self._transaction(conn, "save"):
                dead_deleted_to = self._delete_dead_rows(conn)
                if snapshot is not None:
                    assert file is not None
                    _write_snapshot_row(conn, snapshot, file)
                    # Rows after it go now; those up to it are dead, deleted later.
                    conn.execute("DELETE FROM log WHERE idx > ?", (snapshot.index,))
                elif keep < len(self._terms):
                    conn.execute("DELETE FROM log WHERE idx > ?", (self._offset + keep,))
                if rows:
                    conn.executemany(
                        "INSERT INTO log (idx, term, command, crc) VALUES (?, ?, ?, ?)", rows
                    )
                if new_hard_state != self._hard_state:
                    _write_hard_state(conn, new_hard_state)
            # Committed: bring the bookkeeping up to date.
            if self.on_commit_s is not None:
                self.on_commit_s(time.perf_counter() - began)
            self._unclaimed = None
            self._lowest_row = dead_deleted_to + 1
            if snapshot is not None:
                assert file is not None
                self._set_snapshot(snapshot, file)
            new_sizes = [entry_size(e.command) for e in entries]
            self._log_bytes += sum(new_sizes) - sum(self._sizes[keep:])
            del self._terms[keep:]
            del self._sizes[keep:]
            self._terms.extend(e.term for e in entries)
            self._sizes.extend(new_sizes)
            self._hard_state = new_hard_state
            self._size_bytes = self._snapshot_bytes + self._log_bytes

    def stage_snapshot(self, snapshot: Snapshot) -> None:
        """Write a locally taken snapshot's data to its file, durably, for :meth:`compact`.

        Safe in any thread, overlapping any other call (it only creates a new
        file): this is how a large snapshot is stored without holding up
        saves. Nothing changes for a restart until :meth:`compact` records it.
        Raises StorageError if the disk refuses; the store stays usable.
        """
        file = self._write_snapshot_file(snapshot)
        with self._staged_lock:
            replaced, self._staged = self._staged, (snapshot, file)
        if replaced is not None:  # staged but never recorded (the driver gave up on it)
            snapshot_files.remove(self._dir, replaced[1].name)

    def compact(self, snapshot: Snapshot) -> None:
        """Record a locally taken snapshot and drop the log up to its index, in one transaction.

        Its data goes to a file first, unless :meth:`stage_snapshot` already
        wrote it. A snapshot at or below the stored one is ignored (as
        MemoryStorage does). Raises ValueError, recording nothing, if its term
        disagrees with the stored entry at its index.
        """
        with self._exclusive() as conn:
            file = self._take_staged(snapshot)
            drop = snapshot.index - self._offset
            if drop <= 0 or (drop <= len(self._terms) and self._terms[drop - 1] != snapshot.term):
                if file is not None:
                    snapshot_files.remove(self._dir, file.name)
                if drop <= 0:
                    return
                raise ValueError(
                    f"snapshot at index {snapshot.index} has term {snapshot.term},"
                    f" the stored entry has term {self._terms[drop - 1]}"
                )
            if file is None:
                file = self._write_snapshot_file(snapshot)
            with self._transaction(conn, "compact"):
                # The log rows up to it are dead from here on; later saves delete them.
                _write_snapshot_row(conn, snapshot, file)
            self._unclaimed = None
            self._set_snapshot(snapshot, file)
            self._log_bytes -= sum(self._sizes[:drop])
            del self._terms[:drop]
            del self._sizes[:drop]
            self._size_bytes = self._snapshot_bytes + self._log_bytes

    def size_bytes(self) -> int:
        """Bytes of snapshot plus log as MemoryStorage counts them; O(1), safe from any thread."""
        return self._size_bytes

    def close(self) -> None:
        """Close the database (releasing its lock); idempotent. The store is unusable afterwards."""
        self._closing.set()
        with self._busy_lock():
            if self._conn is not None:
                self._conn.close()
                self._conn = None
                self._unclaimed = None

    # -- internals -----------------------------------------------------------

    def _check_save(
        self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None
    ) -> tuple[int, list[_LogRow]]:
        """How many stored entries a save keeps, and the rows it inserts; ValueError if the
        result would not be a valid log (a gap, a term going down, commit past the end)."""
        if snapshot is not None:
            keep, offset, offset_term = 0, snapshot.index, snapshot.term
        else:
            offset, offset_term = self._offset, self._offset_term
            keep = entries[0].index - offset - 1 if entries else len(self._terms)
            if not 0 <= keep <= len(self._terms):
                raise ValueError(
                    f"entries start at index {entries[0].index}; the stored log"
                    f" holds {offset + 1}..{offset + len(self._terms)}"
                )
        prev_term = self._terms[keep - 1] if keep > 0 else offset_term
        rows = _entry_rows(entries, offset + keep + 1, prev_term)
        last_index = offset + keep + len(entries)
        commit_index = (hard_state or self._hard_state).commit_index
        if commit_index > last_index:
            raise ValueError(f"commit index {commit_index} beyond last index {last_index}")
        _check_bound(hard_state, entries, snapshot)
        return keep, rows

    def _delete_dead_rows(self, conn: sqlite3.Connection) -> int:
        """In a save's transaction: delete the next batch of dead rows; the highest idx deleted
        (rows from _lowest_row up to it; _lowest_row - 1 if there are none)."""
        upto = min(self._lowest_row + DEAD_ROWS_PER_SAVE - 1, self._offset)
        if upto >= self._lowest_row:
            # A range of the rowid b-tree from its start: at most DEAD_ROWS_PER_SAVE rows.
            conn.execute("DELETE FROM log WHERE idx <= ?", (upto,))
            return upto
        return self._lowest_row - 1

    def _set_snapshot(self, snapshot: Snapshot, file: SnapshotFile) -> None:
        """After the row naming ``file`` committed: the bookkeeping, and the old file goes."""
        previous, self._snapshot_file = self._snapshot_file, file.name
        if previous is not None and previous != file.name:
            snapshot_files.remove(self._dir, previous)
        self._offset = snapshot.index
        self._offset_term = snapshot.term
        self._snapshot_bytes = len(snapshot.data)

    def _write_snapshot_file(self, snapshot: Snapshot) -> SnapshotFile:
        try:
            return snapshot_files.write(
                self._dir, snapshot.index, snapshot.term, snapshot.data, aborted=self._closing
            )
        except OSError as e:
            raise StorageError(
                f"{self._dir}: writing the snapshot at index {snapshot.index} failed: {one_line(e)}"
            ) from e

    def _take_staged(self, snapshot: Snapshot) -> SnapshotFile | None:
        """The file stage_snapshot wrote for this very snapshot, handed over once."""
        with self._staged_lock:
            if self._staged is None or self._staged[0] is not snapshot:
                return None
            file, self._staged = self._staged[1], None
            return file

    @contextlib.contextmanager
    def _busy_lock(self) -> Iterator[None]:
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(
                f"{self._path}: SqliteStorage called while another call is running;"
                " calls must be serialised"
            )
        try:
            yield
        finally:
            self._busy.release()

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[sqlite3.Connection]:
        with self._busy_lock():
            if self._conn is None:
                raise RuntimeError(f"{self._path}: storage is closed")
            if self._failed is not None:
                raise StorageError(f"{self._path}: unusable after a failed write: {self._failed}")
            yield self._conn

    @contextlib.contextmanager
    def _transaction(self, conn: sqlite3.Connection, what: str) -> Iterator[None]:
        """One write transaction; any failure leaves the store unusable until reopened.

        After a failed COMMIT (an fsync error, a full disk) nobody knows what
        reached the disk, so the in-memory bookkeeping cannot be trusted: only
        a restart, which reads and checks the file again, can go on.
        """
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            self._failed = f"{what}: {e}"
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            raise StorageError(f"{self._path}: {what} failed: {e}") from e
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            raise


def _entry_rows(entries: Sequence[Entry], first_index: int, prev_term: int) -> list[_LogRow]:
    """The rows to insert for ``entries``; ValueError unless contiguous from ``first_index``
    with terms never decreasing from ``prev_term`` (Raft §5.3)."""
    rows: list[_LogRow] = []
    expected = first_index
    for e in entries:
        if e.index != expected:
            raise ValueError(f"entry index {e.index} where {expected} was expected")
        if e.term < prev_term:
            raise ValueError(f"entry {e.index} has term {e.term}, after term {prev_term}")
        rows.append((e.index, e.term, e.command, entry_crc(e.term, e.index, e.command)))
        expected += 1
        prev_term = e.term
    return rows


def _check_bound(
    hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None
) -> None:
    """ValueError unless every term and index written is at most MAX_RAFT_INT.

    The core never produces more (it refuses to campaign at the bound, and
    every message past it is refused), so this is the last line: a value past
    the bound would be a bug, and writing it would leave a store whose next
    ``term + 1`` no longer fits SQLite's 64 bits. Entries are contiguous with
    non-decreasing terms (checked first), so the last one is the largest.
    """
    values = []
    if hard_state is not None:
        values += [
            ("current_term", hard_state.current_term),
            ("commit_index", hard_state.commit_index),
        ]
    if entries:
        values += [("entry index", entries[-1].index), ("entry term", entries[-1].term)]
    if snapshot is not None:
        values += [("snapshot index", snapshot.index), ("snapshot term", snapshot.term)]
    for what, value in values:
        if value > MAX_RAFT_INT:
            raise ValueError(f"{what} {value} is past the bound {MAX_RAFT_INT}; nothing written")


def _write_hard_state(conn: sqlite3.Connection, hard_state: HardState) -> None:
    conn.execute(
        "UPDATE hard_state SET current_term = ?, voted_for = ?, commit_index = ?, crc = ?"
        " WHERE id = ?",
        (
            hard_state.current_term,
            hard_state.voted_for,
            hard_state.commit_index,
            hard_state_crc(hard_state),
            SINGLE_ROW_ID,
        ),
    )


def _write_snapshot_row(conn: sqlite3.Connection, snapshot: Snapshot, file: SnapshotFile) -> None:
    """Replace the snapshot row with one naming ``file``: the commit point of a snapshot."""
    encoded = membership.encode(snapshot.config) if snapshot.config is not None else None
    conn.execute(
        "INSERT OR REPLACE INTO snapshot (id, idx, term, crc, size, file, config, config_crc)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            SINGLE_ROW_ID,
            snapshot.index,
            snapshot.term,
            file.crc,
            file.size,
            file.name,
            encoded,
            config_crc(encoded) if encoded is not None else None,
        ),
    )


__all__ = ["SqliteStorage"]
