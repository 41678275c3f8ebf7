"""The on-disk format: the database file, its schema, and the checks made before trusting it.

A new store is built under a temporary name and renamed into place only once
its schema and identity are committed and fsynced. So ``raft.db`` existing
means "a fully initialised store": an empty or half-written ``raft.db`` is
corruption, never "a new node". That matters because a node that silently
restarts empty may vote twice in a term (Raft §5.2 relies on votes surviving).

The connection takes SQLite's exclusive lock at once and keeps it until
closed, so a second process started on the same data dir is refused instead
of interleaving its log writes with ours.

Format history: 1 — first format (meta, hard_state, snapshot, log; CRC32 per row);
2 — the snapshot's data moved to its own file, the row names it (see
:mod:`kvraft.storage.snapshot_files`). Format 1 was only ever written by
pre-release builds and is refused, not upgraded.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from kvraft.errors import StorageError, one_line
from kvraft.raft.ready import HardState
from kvraft.storage.records import SINGLE_ROW_ID, config_crc, hard_state_crc

# 3: log entries hold commands with acked_below (client sessions) and snapshots
# hold the sessions; a format-2 log's commands would no longer decode.
# 4: the data API (revisions, set/delete/range/txn): PutOk carries a revision
# and snapshots a new layout, so a format-3 log or snapshot would not apply the
# same. Format 3 was never released: no upgrade path.
# 5: two changes of this release, one format. Leases: PutOp/SetOp/TxnPut/TxnSet
# carry a lease id (another field on the wire, so a format-4 log's commands
# would not decode) and snapshots hold the lease table. Membership: the snapshot
# row holds the cluster configuration as of its index (kvraft.raft.membership),
# and log entries may be configurations; meta holds the seed configuration
# (seed_config, seed_config_crc), written once when the store is created: the
# voters --peers named at bootstrap, or none for a node that joins a running
# cluster (see :func:`create_database`). Format 4 was never released: no
# upgrade path.
FORMAT_VERSION: Final = 5
# Written to the SQLite header: tells a kvraft store from any other SQLite file.
APPLICATION_ID: Final = 0x6B767266  # "kvrf"
DB_FILENAME: Final = "raft.db"

# A checkpoint copies the WAL into the database and fsyncs it, inside the
# commit that crosses this many pages. SQLite's default, kept on measurement
# (tests/storage/bench_sqlite_save.py): checkpoints do not dominate the
# per-commit fsync, and 4096 pages gained no throughput but tripled the worst
# single save (a 30 ms checkpoint instead of 10 ms).
WAL_AUTOCHECKPOINT_PAGES: Final = 1000
# After a checkpoint, shrink a WAL that a large snapshot blew up back to this.
JOURNAL_SIZE_LIMIT_BYTES: Final = 64 * 1024 * 1024

TABLES: Final = ("meta", "hard_state", "snapshot", "log")

# Not STRICT tables: the column types are checked when reading
# (records.read_state), which also catches whatever was written behind our back.
_DDL: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value)",
    # One row. voted_for NULL: no vote in current_term.
    "CREATE TABLE hard_state (id INTEGER PRIMARY KEY CHECK (id = 0),"
    " current_term INTEGER NOT NULL, voted_for INTEGER, commit_index INTEGER NOT NULL,"
    " crc INTEGER NOT NULL)",
    # At most one row; the data is in the file it names (in the data dir), of this size and CRC.
    # config: the configuration as of idx (membership.encode), with its CRC32; NULL: none
    # (the log never held one: the seed from --peers is in force).
    "CREATE TABLE snapshot (id INTEGER PRIMARY KEY CHECK (id = 0),"
    " idx INTEGER NOT NULL, term INTEGER NOT NULL, crc INTEGER NOT NULL,"
    " size INTEGER NOT NULL, file TEXT NOT NULL, config BLOB, config_crc INTEGER)",
    # idx is the rowid: appends, suffix truncation and prefix deletion are b-tree range ops.
    # command NULL: the no-op a new leader appends.
    "CREATE TABLE log (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, command BLOB,"
    " crc INTEGER NOT NULL)",
)


def fsync_path(path: Path) -> None:
    """fsync a file or directory (a directory: so the names it holds survive a power loss)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _configure(conn: sqlite3.Connection) -> None:
    """Per-connection settings; durability depends on every one of them."""
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if mode != "wal":
        raise sqlite3.OperationalError(f"cannot switch to WAL journal mode (got {mode})")
    # FULL: every commit fsyncs the WAL, so a returned save() survives power loss.
    conn.execute("PRAGMA synchronous = FULL")
    # Debian's SQLite zeroes freed pages by default (secure_delete=ON), which
    # more than doubles what deleting dead log rows writes; FAST zeroes only
    # what costs no extra I/O.
    conn.execute("PRAGMA secure_delete = FAST")
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT_BYTES}")


def create_database(db_path: Path, *, cluster_id: str, node_id: int, seed: bytes) -> None:
    """Build a new, empty store at ``db_path`` (which must not exist), crash-safely.

    ``seed`` is the encoded configuration (``membership.encode``) this node
    starts from until its log or a snapshot holds one: written here, once, and
    never again, so that a restart cannot re-seed a stale member list from
    whatever ``--peers`` says that day (thesis §4.1: the log decides).
    """
    tmp = db_path.with_name(db_path.name + ".new")
    for suffix in ("", "-wal", "-shm", "-journal"):  # leftovers of a crash during creation
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(tmp, isolation_level=None, timeout=0)
    try:
        _configure(conn)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        for statement in _DDL:
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [
                ("format_version", FORMAT_VERSION),
                ("cluster_id", cluster_id),
                ("node_id", node_id),
                ("seed_config", seed),
                ("seed_config_crc", config_crc(seed)),
            ],
        )
        empty = HardState()
        conn.execute(
            "INSERT INTO hard_state (id, current_term, voted_for, commit_index, crc)"
            " VALUES (?, ?, ?, ?, ?)",
            (SINGLE_ROW_ID, empty.current_term, empty.voted_for, empty.commit_index,
             hard_state_crc(empty)),
        )  # fmt: skip
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()  # the last connection checkpoints and removes the WAL
    fsync_path(tmp)
    os.replace(tmp, db_path)
    fsync_path(db_path.parent)


@contextlib.contextmanager
def _refuse_on_sqlite_errors(db_path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as e:
        if e.sqlite_errorname.startswith("SQLITE_BUSY"):  # another connection holds the lock
            raise StorageError(f"{db_path}: in use by another process") from None
        raise StorageError(f"{db_path}: corrupt or unreadable: {one_line(e)}") from None
    except sqlite3.DatabaseError as e:  # "file is not a database", "malformed", ...
        raise StorageError(f"{db_path}: corrupt: {one_line(e)}") from None


def _check_identity(conn: sqlite3.Connection, db_path: Path, cluster_id: str, node_id: int) -> None:
    (app_id,) = conn.execute("PRAGMA application_id").fetchone()
    if app_id != APPLICATION_ID:
        raise StorageError(f"{db_path}: not a kvraft store (SQLite application_id {app_id})")
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    missing = [t for t in TABLES if t not in names]
    if missing:
        raise StorageError(f"{db_path}: corrupt: missing table(s) {', '.join(missing)}")
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    version = meta.get("format_version")
    if type(version) is not int:
        raise StorageError(f"{db_path}: corrupt: meta.format_version is {version!r}")
    if version > FORMAT_VERSION:
        raise StorageError(
            f"{db_path}: format version {version} is newer than this kvraft supports"
            f" ({FORMAT_VERSION}); upgrade kvraft"
        )
    if version != FORMAT_VERSION:
        raise StorageError(
            f"{db_path}: format version {version} was written by a pre-release kvraft"
            f" and cannot be opened by this one ({FORMAT_VERSION}); there is no upgrade path"
        )
    stored_cluster, stored_node = meta.get("cluster_id"), meta.get("node_id")
    if type(stored_cluster) is not str or type(stored_node) is not int:
        raise StorageError(
            f"{db_path}: corrupt: meta has cluster_id={stored_cluster!r}, node_id={stored_node!r}"
        )
    if stored_cluster != cluster_id:
        raise StorageError(
            f"{db_path}: belongs to cluster {stored_cluster!r}, not cluster {cluster_id!r}"
        )
    if stored_node != node_id:
        raise StorageError(f"{db_path}: belongs to node {stored_node}, not node {node_id}")


def _quick_check(conn: sqlite3.Connection, db_path: Path) -> None:
    # A row may hold several lines ("*** in database main ***\nOn tree page 35 ...").
    problems = [
        line.strip()
        for (row,) in conn.execute("PRAGMA quick_check")
        for line in str(row).splitlines()
        if line.strip() and not line.startswith("***")
    ]
    if problems != ["ok"]:
        first = problems[0] if problems else "failed"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise StorageError(f"{db_path}: corrupt: quick_check: {first}{more}")


def connect(db_path: Path, *, cluster_id: str, node_id: int) -> sqlite3.Connection:
    """Open an existing store, lock it, and check it is this node's, in a known format, sound.

    Raises StorageError (one line, naming ``db_path``) otherwise. The rows'
    contents are checked afterwards by :func:`kvraft.storage.records.read_state`.
    """
    if db_path.stat().st_size == 0:
        raise StorageError(f"{db_path}: corrupt: empty file")
    with _refuse_on_sqlite_errors(db_path):
        # timeout=0: another process holding the lock is an error, not a wait.
        conn = sqlite3.connect(db_path, isolation_level=None, timeout=0, check_same_thread=False)
        try:
            _configure(conn)
            # Take the exclusive lock now (held until close, by locking_mode).
            conn.execute("BEGIN EXCLUSIVE")
            conn.execute("COMMIT")
            _check_identity(conn, db_path, cluster_id, node_id)
            _quick_check(conn, db_path)
        except BaseException:
            conn.close()
            raise
    return conn
