"""SqliteStorage's own contract: restarts, one transaction per call, misuse, threads, memory."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kvraft.errors import StorageError
from kvraft.raft import membership
from kvraft.raft.membership import Membership
from kvraft.raft.messages import Entry
from kvraft.raft.ready import HardState, PersistentState, Snapshot
from kvraft.storage.snapshot_files import WriteAborted
from kvraft.storage.sqlite import SqliteStorage

CLUSTER = "unit"


def open_store(data_dir: Path) -> SqliteStorage:
    return SqliteStorage.open(data_dir, cluster_id=CLUSTER, node_id=0)


@pytest.fixture
def store(tmp_path: Path) -> SqliteStorage:
    s = open_store(tmp_path / "n0")
    yield s  # type: ignore[misc]
    s.close()


def entries(first: int, last: int, term: int) -> list[Entry]:
    return [Entry(term=term, index=i, command=b"command %d" % i) for i in range(first, last + 1)]


def test_a_new_store_is_empty(tmp_path: Path) -> None:
    store = open_store(tmp_path / "fresh" / "n0")  # parents created too
    assert store.load() == PersistentState()
    assert store.size_bytes() == 0
    assert store.path == tmp_path / "fresh" / "n0" / "raft.db"
    store.close()


def test_close_and_open_preserve_everything(tmp_path: Path) -> None:
    """A restarted node rebuilds its state from snapshot + log."""
    store = open_store(tmp_path)
    store.save(HardState(2, 0, 3), entries(1, 5, 2), None)
    store.compact(Snapshot(3, 2, b"state machine at 3"))
    store.save(
        HardState(4, None, 6),
        [Entry(term=4, index=6, command=None), Entry(term=4, index=7, command=b"")],
        None,
    )
    before, size = store.load(), store.size_bytes()
    store.close()

    store = open_store(tmp_path)
    after = store.load()
    assert after == before
    assert store.size_bytes() == size == len(b"state machine at 3") + 2 * 32 + 2 * 41
    assert after.hard_state == HardState(4, None, 6)
    assert after.snapshot == Snapshot(3, 2, b"state machine at 3")
    assert [e.index for e in after.entries] == [4, 5, 6, 7]
    assert after.entries[2].command is None and after.entries[3].command == b""
    store.close()


def test_load_may_be_called_again_and_sees_later_saves(store: SqliteStorage) -> None:
    first = store.load()
    assert store.load() == first
    store.save(HardState(1, 0, 0), entries(1, 2, 1), None)
    assert [e.index for e in store.load().entries] == [1, 2]


def count_transactions(store: SqliteStorage) -> list[str]:
    statements: list[str] = []
    conn = store._conn
    assert conn is not None
    conn.set_trace_callback(statements.append)
    return statements


def test_a_whole_ready_costs_one_transaction(store: SqliteStorage) -> None:
    """Snapshot + hard state + 512 entries: one BEGIN, one COMMIT (so one WAL fsync)."""
    statements = count_transactions(store)
    store.save(HardState(3, 1, 100), entries(101, 612, 3), Snapshot(100, 2, b"x" * 100_000))
    assert statements.count("BEGIN IMMEDIATE") == 1
    assert statements.count("COMMIT") == 1
    statements.clear()
    store.compact(Snapshot(300, 3, b"y" * 1000))
    assert statements.count("BEGIN IMMEDIATE") == statements.count("COMMIT") == 1
    # Recording a snapshot writes one row, however long the prefix it makes dead.
    writes = [s for s in statements if s.split()[0] in {"INSERT", "UPDATE", "DELETE"}]
    assert len(writes) == 1 and writes[0].startswith("INSERT OR REPLACE INTO snapshot")


def log_rows(store: SqliteStorage) -> int:
    assert store._conn is not None
    (count,) = store._conn.execute("SELECT count(*) FROM log").fetchone()
    return int(count)


def test_dead_rows_are_deleted_a_batch_per_save_and_never_loaded(tmp_path: Path) -> None:
    """Rows up to the snapshot stay in the table after compact(); each later save deletes
    at most DEAD_ROWS_PER_SAVE of them, and a restart in between loads only live ones."""
    store = open_store(tmp_path)
    store.save(HardState(1, 0, 2500), entries(1, 3000, 1), None)
    store.compact(Snapshot(2500, 1, b"at 2500"))
    assert log_rows(store) == 3000
    store.close()
    store = open_store(tmp_path)
    assert [e.index for e in store.load().entries] == list(range(2501, 3001))
    for term, expected in [(2, 2000), (3, 1000), (4, 500), (5, 500)]:
        store.save(HardState(term, 0, 2500), [], None)  # any write deletes a batch
        assert log_rows(store) == expected
    assert [e.index for e in store.load().entries] == list(range(2501, 3001))
    store.close()


def test_a_hard_state_only_save_writes_one_row(store: SqliteStorage) -> None:
    statements = count_transactions(store)
    store.save(HardState(1, 2, 0), [], None)
    writes = [s for s in statements if s.split()[0] in {"INSERT", "UPDATE", "DELETE"}]
    assert len(writes) == 1 and writes[0].startswith("UPDATE hard_state")
    statements.clear()
    store.save(HardState(1, 2, 0), [], None)  # unchanged: nothing to do
    store.save(None, [], None)
    assert statements == []


def test_a_truncating_save_replaces_the_suffix(store: SqliteStorage) -> None:
    store.save(HardState(1, 0, 2), entries(1, 10, 1), None)
    store.save(HardState(2, 1, 2), entries(4, 5, 2), None)
    assert [(e.index, e.term) for e in store.load().entries] == [
        (1, 1),
        (2, 1),
        (3, 1),
        (4, 2),
        (5, 2),
    ]


def test_an_installed_snapshot_replaces_the_whole_log(store: SqliteStorage) -> None:
    store.save(HardState(1, 0, 2), entries(1, 10, 1), None)
    store.save(HardState(3, None, 20), entries(21, 22, 3), Snapshot(20, 2, b"leader's"))
    state = store.load()
    assert state.snapshot == Snapshot(20, 2, b"leader's")
    assert [e.index for e in state.entries] == [21, 22]


def test_compacting_at_or_below_the_snapshot_is_ignored(store: SqliteStorage) -> None:
    store.save(HardState(1, 0, 5), entries(1, 5, 1), None)
    store.compact(Snapshot(4, 1, b"at 4"))
    store.compact(Snapshot(2, 1, b"older"))
    state = store.load()
    assert state.snapshot == Snapshot(4, 1, b"at 4")
    assert [e.index for e in state.entries] == [5]


def snapshot_files_in(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.glob("snapshot-*"))


def test_a_staged_snapshot_counts_only_once_compact_records_it(tmp_path: Path) -> None:
    """stage_snapshot writes the file; compact() records it (the commit point) and the
    file of the snapshot it supersedes goes."""
    store = open_store(tmp_path)
    store.save(HardState(1, 0, 8), entries(1, 8, 1), None)
    first = Snapshot(4, 1, b"at 4")
    store.stage_snapshot(first)
    (staged,) = snapshot_files_in(tmp_path)
    assert store.load().snapshot is None  # not recorded yet
    store.compact(first)
    assert snapshot_files_in(tmp_path) == [staged]
    second = Snapshot(6, 1, b"at 6")
    store.stage_snapshot(second)
    store.compact(second)
    (recorded,) = snapshot_files_in(tmp_path)
    assert recorded != staged
    store.close()
    store = open_store(tmp_path)
    assert store.load().snapshot == second
    assert snapshot_files_in(tmp_path) == [recorded]
    store.close()


def test_unrecorded_snapshot_files_are_deleted_on_open(tmp_path: Path) -> None:
    """A crash between writing a snapshot file and recording it leaves a stray file: the
    next open deletes it (and any temporary), keeping the recorded one."""
    store = open_store(tmp_path)
    store.save(HardState(1, 0, 8), entries(1, 8, 1), None)
    store.compact(Snapshot(2, 1, b"at 2"))
    (recorded,) = snapshot_files_in(tmp_path)
    store.stage_snapshot(Snapshot(5, 1, b"at 5"))  # never recorded
    (tmp_path / "snapshot-00000000000000000009-1-0123456789abcdef.snap.tmp").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not ours to delete")
    assert len(snapshot_files_in(tmp_path)) == 3
    store.close()
    store = open_store(tmp_path)
    assert store.load().snapshot == Snapshot(2, 1, b"at 2")
    assert snapshot_files_in(tmp_path) == [recorded]
    assert (tmp_path / "notes.txt").exists()
    store.close()


def test_compact_discards_a_staged_snapshot_it_does_not_record(store: SqliteStorage) -> None:
    """A staged snapshot overtaken by a newer one, or contradicting the log, leaves no file."""
    store.save(HardState(2, 0, 8), entries(1, 4, 1) + entries(5, 8, 2), None)
    store.compact(Snapshot(6, 2, b"at 6"))
    recorded = snapshot_files_in(store.path.parent)
    stale = Snapshot(3, 1, b"at 3")
    store.stage_snapshot(stale)
    store.compact(stale)
    wrong_term = Snapshot(7, 1, b"at 7, wrong term")
    store.stage_snapshot(wrong_term)
    with pytest.raises(ValueError, match="has term 1, the stored entry has term 2"):
        store.compact(wrong_term)
    assert snapshot_files_in(store.path.parent) == recorded
    assert store.load().snapshot == Snapshot(6, 2, b"at 6")


def test_a_newer_staged_snapshot_supersedes_an_unrecorded_one(store: SqliteStorage) -> None:
    """A snapshot staged and never recorded (its driver gave up on it) leaves no file once
    a newer one is staged; compact() then records only the newer one."""
    store.save(HardState(1, 0, 6), entries(1, 6, 1), None)
    abandoned, newer = Snapshot(3, 1, b"at 3"), Snapshot(5, 1, b"at 5")
    store.stage_snapshot(abandoned)
    store.stage_snapshot(newer)
    (staged,) = snapshot_files_in(store.path.parent)
    store.compact(abandoned)  # not the staged one: written afresh, then recorded
    store.compact(newer)
    assert snapshot_files_in(store.path.parent) == [staged]
    assert store.load().snapshot == newer


def test_staging_needs_no_turn_on_the_storage_thread(store: SqliteStorage) -> None:
    """stage_snapshot runs while another call holds the store: it never waits for a save."""
    store.save(HardState(1, 0, 3), entries(1, 3, 1), None)
    snapshot = Snapshot(3, 1, b"s" * 100_000)
    with store._busy_lock():  # as if a save were running in the storage thread
        store.stage_snapshot(snapshot)
    store.compact(snapshot)
    assert store.load().snapshot == snapshot


def test_close_stops_a_snapshot_being_written(tmp_path: Path) -> None:
    """A staging write still running when the store closes stops and leaves nothing behind."""
    store = open_store(tmp_path)
    store.close()
    with pytest.raises(WriteAborted, match="store closed while writing the snapshot"):
        store.stage_snapshot(Snapshot(1, 1, b"x" * 10))
    assert snapshot_files_in(tmp_path) == []


def test_a_failed_snapshot_write_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk refusing a snapshot file is a StorageError that leaves no file and the
    store as it was, still usable (nothing was recorded)."""
    store = open_store(tmp_path)
    store.save(HardState(1, 0, 3), entries(1, 3, 1), None)

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", full_disk)
        with pytest.raises(StorageError, match=r"index 3 failed: .*No space left on device"):
            store.stage_snapshot(Snapshot(3, 1, b"s"))
        with pytest.raises(StorageError, match=r"index 3 failed: .*No space left on device"):
            store.compact(Snapshot(3, 1, b"s"))
    assert snapshot_files_in(tmp_path) == []
    store.save(HardState(1, 0, 3), entries(4, 4, 1), None)
    assert [e.index for e in store.load().entries] == [1, 2, 3, 4]
    assert store.load().snapshot is None
    store.close()


MISUSES = [
    pytest.param(
        lambda s: s.save(None, entries(7, 8, 1), None), "entries start at index 7", id="gap"
    ),
    pytest.param(
        lambda s: s.save(None, entries(0, 1, 1), None), "entries start at index 0", id="before"
    ),
    pytest.param(
        lambda s: s.save(
            None, [Entry(term=2, index=6, command=None), Entry(term=2, index=8, command=None)], None
        ),
        "entry index 8 where 7 was expected",
        id="hole-in-batch",
    ),
    pytest.param(
        lambda s: s.save(None, entries(4, 4, 1), None),
        "entry 4 has term 1, after term 2",
        id="term-down",
    ),
    pytest.param(
        lambda s: s.save(HardState(2, 0, 6), [], None),
        "commit index 6 beyond last index 5",
        id="commit",
    ),
    pytest.param(
        lambda s: s.save(HardState(2, 0, 5), entries(4, 4, 2), None),
        "commit index 5 beyond last index 4",
        id="truncate-below-commit",
    ),
    pytest.param(
        lambda s: s.save(None, entries(9, 9, 3), Snapshot(7, 3, b"")),
        "entry index 9 where 8 was expected",
        id="install-gap",
    ),
    pytest.param(
        lambda s: s.compact(Snapshot(4, 1, b"")),
        "snapshot at index 4 has term 1",
        id="compact-term",
    ),
]


@pytest.mark.parametrize(("misuse", "message"), MISUSES)
def test_misuse_is_refused_before_anything_is_written(
    store: SqliteStorage, misuse: object, message: str
) -> None:
    """Persisting a broken log would only make the next start refuse the store."""
    store.save(HardState(2, 0, 3), entries(1, 2, 1) + entries(3, 5, 2), None)
    before, size = store.load(), store.size_bytes()
    with pytest.raises(ValueError, match=message):
        misuse(store)  # type: ignore[operator]
    assert store.load() == before and store.size_bytes() == size


def test_overlapping_calls_are_refused(store: SqliteStorage) -> None:
    """The worker thread's save and an event-loop load must never run together."""
    with store._busy_lock(), pytest.raises(RuntimeError, match="must be serialised"):
        store.load()
    assert store.size_bytes() == 0  # lock-free: fine from any thread at any time


def test_closed_store_is_unusable_and_close_is_idempotent(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.close()
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.save(HardState(1, 0, 0), [], None)
    with pytest.raises(RuntimeError, match="closed"):
        store.load()


def test_a_failed_write_leaves_the_old_state_and_an_unusable_store(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.save(HardState(1, 0, 1), entries(1, 3, 1), None)
    before = store.load()
    assert store._conn is not None
    (pages,) = store._conn.execute("PRAGMA page_count").fetchone()
    store._conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # the "disk" is now full
    with pytest.raises(StorageError, match="save failed: database or disk is full"):
        store.save(None, [Entry(term=1, index=4, command=b"z" * 1_000_000)], None)
    with pytest.raises(StorageError, match="unusable after a failed write"):
        store.save(HardState(2, 0, 1), [], None)
    store.close()
    store = open_store(tmp_path)
    assert store.load() == before
    store.close()


MEMORY_PROBE = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    from kvraft.raft.ready import Snapshot
    from kvraft.storage.sqlite import SqliteStorage

    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024

    size = 64 * 1024 * 1024
    store = SqliteStorage.open(Path(sys.argv[1]), cluster_id="m", node_id=0)
    snapshot = Snapshot(0, 0, b"\\x5a" * size)  # touched pages: counted in RSS
    base = peak_mib()
    store.compact(Snapshot(1, 0, snapshot.data))
    after_write = peak_mib()
    store.close()
    del snapshot
    store = SqliteStorage.open(Path(sys.argv[1]), cluster_id="m", node_id=0)
    loaded = store.load()
    assert len(loaded.snapshot.data) == size
    print(after_write - base, peak_mib() - base)
    """
)


def test_a_large_snapshot_is_written_and_read_without_extra_copies(tmp_path: Path) -> None:
    """64 MiB in and out: writing adds little to the peak; reading, one copy (the result)."""
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    write_mib, read_mib = int(out[0]), int(out[1])
    assert write_mib < 16, f"writing a 64 MiB snapshot raised the peak RSS by {write_mib} MiB"
    # open() reads the snapshot once (the bytes handed to load), dropping the old copy first.
    assert read_mib < 16, f"reading a 64 MiB snapshot raised the peak RSS by {read_mib} MiB"


def test_a_snapshot_keeps_its_configuration_across_a_reopen(tmp_path: Path) -> None:
    """The configuration as of a snapshot's index is stored with it (membership changes).

    Reference: Raft thesis §4.1 (compaction keeps the configuration)
    """
    config = Membership(frozenset({0, 1, 2}), frozenset({5}), {5: "h5:7005"})
    s = open_store(tmp_path / "n0")
    s.save(HardState(1, None, 3), entries(1, 3, 1), None)
    s.compact(Snapshot(2, 1, b"state", config))
    s.save(None, (), Snapshot(3, 1, b"installed", config))
    s.close()

    s = open_store(tmp_path / "n0")
    try:
        snapshot = s.load().snapshot
        assert snapshot is not None and snapshot.config is not None
        assert snapshot.config.same_as(config)
    finally:
        s.close()


def test_a_damaged_configuration_in_the_snapshot_row_is_refused(tmp_path: Path) -> None:
    import sqlite3

    s = open_store(tmp_path / "n0")
    s.save(HardState(1, None, 2), entries(1, 2, 1), None)
    s.compact(Snapshot(2, 1, b"state", Membership.of_voters([0, 1, 2])))
    s.close()
    conn = sqlite3.connect(tmp_path / "n0" / "raft.db")
    conn.execute("UPDATE snapshot SET config = ?", (membership.encode(Membership.of_voters([0])),))
    conn.commit()
    conn.close()

    with pytest.raises(StorageError, match="config checksum mismatch"):
        open_store(tmp_path / "n0")


def test_the_seed_is_written_once_at_creation_and_kept_by_every_later_open(tmp_path: Path) -> None:
    """A restart's --peers cannot change who the members are: the store's seed stays.

    Reference: Raft thesis §4.1 (the log, not a flag, decides the configuration)
    """
    seed = Membership.of_voters([0, 1, 2], {0: "h0:1", 1: "h1:1", 2: "h2:1"})
    SqliteStorage.open(tmp_path, cluster_id=CLUSTER, node_id=0, seed=seed).close()

    other = Membership.of_voters([0, 1, 2, 3, 4])
    store = SqliteStorage.open(tmp_path, cluster_id=CLUSTER, node_id=0, seed=other)
    try:
        assert store.seed.same_as(seed)
    finally:
        store.close()


def test_a_store_created_without_a_seed_has_no_members(tmp_path: Path) -> None:
    """The store of a node that joins a running cluster: nobody, until a leader says."""
    SqliteStorage.open(tmp_path, cluster_id=CLUSTER, node_id=3).close()

    store = SqliteStorage.open(
        tmp_path, cluster_id=CLUSTER, node_id=3, seed=Membership.of_voters([0, 1, 2, 3])
    )
    try:
        assert store.seed.members == frozenset()
    finally:
        store.close()
