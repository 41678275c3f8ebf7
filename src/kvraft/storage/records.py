"""How Raft state maps to SQLite rows, and the checks every stored row must pass.

SQLite's ``PRAGMA quick_check`` proves the *pages* are well formed, but not that
what they hold means anything: a flipped bit inside a command BLOB, a term
stored as text by a careless hand, or a row deleted from the middle of the log
all leave a perfectly valid database. So each row carries a CRC32 of its
content, and :func:`read_state` checks types, checksums and the Raft invariants
the driver relies on (a contiguous log after the snapshot, terms that never
decrease, a commit index inside the log) before anything is handed out. A
failure raises :class:`CorruptRow`, which the opener turns into a
:class:`kvraft.errors.StorageError` naming the file: corrupt state is refused,
never silently used.
"""

from __future__ import annotations

import sqlite3
import struct
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from kvraft.raft import membership
from kvraft.raft.membership import Membership
from kvraft.raft.messages import MAX_RAFT_INT, Entry
from kvraft.raft.ready import HardState, PersistentState, Snapshot

# The MemoryStorage accounting, kept identical so a threshold means the same
# thing in the simulator and on disk: a fixed overhead per entry plus its command.
ENTRY_OVERHEAD_BYTES: Final = 32

# The id of the one row of the single-row tables (hard_state, snapshot).
SINGLE_ROW_ID: Final = 0

_ENTRY_HEADER = struct.Struct("<qqB")  # term, index, has-command
_HARD_STATE = struct.Struct("<qqBq")  # term, commit, has-vote, vote
_SNAPSHOT_HEADER = struct.Struct("<qq")  # index, term


class CorruptRow(Exception):
    """A stored row or the log as a whole breaks a rule; the message says which and where."""


def entry_size(command: bytes | None) -> int:
    """What one entry adds to ``size_bytes`` (the same formula as MemoryStorage)."""
    return ENTRY_OVERHEAD_BYTES + (len(command) if command is not None else 0)


def entry_crc(term: int, index: int, command: bytes | None) -> int:
    """CRC32 of term|index|command; None and b"" differ (the no-op is not an empty command)."""
    crc = zlib.crc32(_ENTRY_HEADER.pack(term, index, command is not None))
    return zlib.crc32(command, crc) if command else crc


def hard_state_crc(hard_state: HardState) -> int:
    """CRC32 of the hard state's three fields (a vote for nobody differs from one for node 0)."""
    voted_for = hard_state.voted_for
    return zlib.crc32(
        _HARD_STATE.pack(
            hard_state.current_term,
            hard_state.commit_index,
            voted_for is not None,
            voted_for if voted_for is not None else 0,
        )
    )


def snapshot_crc(index: int, term: int, data: bytes | memoryview) -> int:
    """CRC32 of index|term|data; zlib releases the GIL while it reads a large ``data``."""
    return zlib.crc32(data, zlib.crc32(_SNAPSHOT_HEADER.pack(index, term)))


@dataclass(slots=True)
class LoadedState:
    """The validated contents of a store, plus the bookkeeping the store keeps in memory.

    ``terms[i]`` and ``sizes[i]`` describe ``state.entries[i]``; they let ``save``
    check a batch against the stored log and keep ``size_bytes`` current without
    querying the database.
    """

    state: PersistentState
    terms: array[int]
    sizes: array[int]
    snapshot_file: str | None  # the file holding state.snapshot's data
    lowest_row: int | None  # the lowest log row's idx, dead rows included; None: no rows
    # The configuration the store was created with (meta.seed_config): in force
    # until the log or the snapshot holds one.
    seed: Membership


def _int(value: object, what: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    # bool is an int subclass but sqlite never returns one; be exact anyway.
    if type(value) is not int:
        raise CorruptRow(f"{what} has the wrong type ({type(value).__name__}, expected integer)")
    if value < minimum:
        raise CorruptRow(f"{what} is {value}, below {minimum}")
    if maximum is not None and value > maximum:
        raise CorruptRow(f"{what} is {value}, past the bound {maximum}")
    return value


def _raft_int(value: object, what: str) -> int:
    """A term or index: ``0..MAX_RAFT_INT`` (the save path never writes more)."""
    return _int(value, what, maximum=MAX_RAFT_INT)


def _read_hard_state(conn: sqlite3.Connection) -> HardState:
    rows = conn.execute(
        "SELECT id, current_term, voted_for, commit_index, crc FROM hard_state"
    ).fetchall()
    if len(rows) != 1 or rows[0][0] != SINGLE_ROW_ID:
        raise CorruptRow(f"expected exactly one hard_state row, found {len(rows)}")
    _, term, voted_for, commit, crc = rows[0]
    hard_state = HardState(
        current_term=_raft_int(term, "hard_state.current_term"),
        voted_for=None if voted_for is None else _int(voted_for, "hard_state.voted_for"),
        commit_index=_raft_int(commit, "hard_state.commit_index"),
    )
    if _int(crc, "hard_state.crc") != hard_state_crc(hard_state):
        raise CorruptRow("hard_state checksum mismatch")
    return hard_state


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    """The snapshot row: which file holds the snapshot's data, and how to check it."""

    index: int
    term: int
    crc: int
    size: int
    file: str
    config: Membership | None = None


def config_crc(encoded: bytes) -> int:
    """CRC32 of a snapshot row's encoded configuration."""
    return zlib.crc32(encoded)


def read_seed(conn: sqlite3.Connection) -> Membership:
    """The seed configuration written into meta when the store was created, checked."""
    meta = dict(
        conn.execute(
            "SELECT key, value FROM meta WHERE key IN ('seed_config', 'seed_config_crc')"
        ).fetchall()
    )
    encoded, crc = meta.get("seed_config"), meta.get("seed_config_crc")
    if type(encoded) is not bytes:
        raise CorruptRow(f"meta.seed_config is {type(encoded).__name__}, expected a blob")
    if _int(crc, "meta.seed_config_crc") != config_crc(encoded):
        raise CorruptRow("meta.seed_config checksum mismatch")
    try:
        return membership.decode(encoded)
    except ValueError as exc:
        raise CorruptRow(f"meta.seed_config: {exc}") from None


def read_snapshot_row(conn: sqlite3.Connection) -> SnapshotRow | None:
    """The snapshot row, type-checked, or None if no snapshot was ever stored."""
    rows = conn.execute(
        "SELECT id, idx, term, crc, size, file, config, config_crc FROM snapshot"
    ).fetchall()
    if not rows:
        return None
    if len(rows) != 1 or rows[0][0] != SINGLE_ROW_ID:
        raise CorruptRow(f"expected at most one snapshot row, found {len(rows)}")
    _, index, term, crc, size, file, encoded, encoded_crc = rows[0]
    if type(file) is not str:
        raise CorruptRow(f"snapshot.file has the wrong type ({type(file).__name__}, expected text)")
    config = None
    if encoded is not None:
        if type(encoded) is not bytes:
            raise CorruptRow(f"snapshot.config has the wrong type ({type(encoded).__name__})")
        if _int(encoded_crc, "snapshot.config_crc") != config_crc(encoded):
            raise CorruptRow("snapshot.config checksum mismatch")
        try:
            config = membership.decode(encoded)
        except ValueError as exc:
            raise CorruptRow(f"snapshot.config: {exc}") from None
    return SnapshotRow(
        index=_raft_int(index, "snapshot.idx"),
        term=_raft_int(term, "snapshot.term"),
        crc=_int(crc, "snapshot.crc"),
        size=_int(size, "snapshot.size"),
        file=file,
        config=config,
    )


def read_state(
    conn: sqlite3.Connection, read_snapshot_data: Callable[[SnapshotRow], bytes]
) -> LoadedState:
    """Read and check everything; raise :class:`CorruptRow` on the first rule broken.

    ``read_snapshot_data`` reads and checks the data of the snapshot a row
    describes (it lives outside the database: see :mod:`kvraft.storage.snapshot_files`).
    """
    hard_state = _read_hard_state(conn)
    seed = read_seed(conn)
    snapshot_row = read_snapshot_row(conn)
    snapshot = None
    if snapshot_row is not None:
        data = read_snapshot_data(snapshot_row)
        snapshot = Snapshot(
            index=snapshot_row.index, term=snapshot_row.term, data=data, config=snapshot_row.config
        )
    expected = snapshot.index + 1 if snapshot is not None else 1
    prev_term = snapshot.term if snapshot is not None else 0
    entries: list[Entry] = []
    terms: array[int] = array("q")
    sizes: array[int] = array("q")
    # Rows at or below the snapshot are dead (deleted a batch at a time by later saves).
    rows = conn.execute(
        "SELECT idx, term, command, crc FROM log WHERE idx > ? ORDER BY idx", (expected - 1,)
    )
    for row in rows:
        index = _raft_int(row[0], "log.idx")
        where = f"log entry {index}"
        term = _raft_int(row[1], f"{where} term")
        command = row[2]
        if command is not None and type(command) is not bytes:
            raise CorruptRow(
                f"{where} command has the wrong type ({type(command).__name__}, expected blob)"
            )
        if _int(row[3], f"{where} crc") != entry_crc(term, index, command):
            raise CorruptRow(f"{where} checksum mismatch")
        # Invariant (PersistentState): contiguous, starting right after the snapshot.
        if index != expected:
            raise CorruptRow(f"log not contiguous: expected index {expected}, found {index}")
        # Raft §5.3: terms in a log never decrease (and not below the snapshot's).
        if term < prev_term:
            raise CorruptRow(f"{where} has term {term}, after term {prev_term}")
        entries.append(Entry(term=term, index=index, command=command))
        terms.append(term)
        sizes.append(entry_size(command))
        expected += 1
        prev_term = term
    last_index = expected - 1
    (lowest_row,) = conn.execute("SELECT min(idx) FROM log").fetchone()
    if lowest_row is not None:
        lowest_row = _int(lowest_row, "log.idx")
    if hard_state.commit_index > last_index:
        raise CorruptRow(
            f"commit index {hard_state.commit_index} is beyond the last index {last_index}"
        )
    return LoadedState(
        PersistentState(hard_state, snapshot, tuple(entries)),
        terms,
        sizes,
        snapshot_row.file if snapshot_row is not None else None,
        lowest_row,
        seed,
    )
