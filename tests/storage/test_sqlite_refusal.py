"""Opening refuses a data dir that is not this node's, or is newer, or is corrupt.

Each refusal is a StorageError whose message is one line naming the database
file and the problem: torn or corrupt storage is detected and refused with a
clear error, never silently used.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from kvraft.errors import StorageError
from kvraft.raft import membership
from kvraft.raft.membership import Membership
from kvraft.raft.messages import Entry
from kvraft.raft.ready import HardState, Snapshot
from kvraft.storage.records import entry_crc, hard_state_crc
from kvraft.storage.sqlite import SqliteStorage

CLUSTER = "refusal"
NODE = 3
MARKER = b"FLIP-ME-PLEASE-"


def open_store(data_dir: Path, *, cluster_id: str = CLUSTER, node_id: int = NODE) -> SqliteStorage:
    return SqliteStorage.open(data_dir, cluster_id=cluster_id, node_id=node_id)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A closed store: snapshot at 10 (term 1), entries 11..40 (terms 2, then 3 from 31), commit 35.

    Entry 25's command contains MARKER, the snapshot data starts with it too.
    """
    d = tmp_path / "n3"
    store = open_store(d)
    entries = [Entry(term=1, index=i, command=b"cmd-%d" % i) for i in range(1, 11)]
    store.save(HardState(1, 1, 10), entries, None)
    store.compact(Snapshot(10, 1, MARKER + b"snapshot-data" * 100))
    commands = {i: b"c%d" % i for i in range(11, 41)} | {25: MARKER + b"25", 31: None}
    entries = [Entry(term=2 if i <= 30 else 3, index=i, command=commands[i]) for i in range(11, 41)]
    store.save(HardState(3, 2, 35), entries, None)
    store.close()
    return d


def db_file(data_dir: Path) -> Path:
    return data_dir / "raft.db"


def refusal(data_dir: Path, **kwargs: str | int) -> str:
    """Open, expect a refusal, and return its message (checked to be one line naming the file)."""
    with pytest.raises(StorageError) as info:
        open_store(data_dir, **kwargs).close()  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    assert str(db_file(data_dir)) in message
    return message


def edit(data_dir: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    """Change rows behind the store's back, as an operator with the sqlite3 shell could."""
    conn = sqlite3.connect(db_file(data_dir), isolation_level=None)
    try:
        for sql, params in statements:
            conn.execute(sql, params)
    finally:
        conn.close()


def test_the_fixture_store_opens_and_holds_what_was_saved(data_dir: Path) -> None:
    store = open_store(data_dir)
    state = store.load()
    store.close()
    assert state.hard_state == HardState(3, 2, 35)
    assert state.snapshot is not None and state.snapshot.index == 10
    assert [e.index for e in state.entries] == list(range(11, 41))


# -- identity ------------------------------------------------------------------


def test_refuses_the_data_dir_of_another_node(data_dir: Path) -> None:
    message = refusal(data_dir, node_id=4)
    assert "belongs to node 3, not node 4" in message


def test_refuses_the_data_dir_of_another_cluster(data_dir: Path) -> None:
    message = refusal(data_dir, cluster_id="other")
    assert "belongs to cluster 'refusal', not cluster 'other'" in message


def test_refuses_a_newer_format_version(data_dir: Path) -> None:
    edit(data_dir, ("UPDATE meta SET value = 6 WHERE key = 'format_version'", ()))
    message = refusal(data_dir)
    assert "format version 6 is newer than this kvraft supports (5)" in message


# 3: before the data API's revisions; 4: before leases and membership changes (never
# released, like 1 and 2).
@pytest.mark.parametrize("old", [1, 2, 3, 4])
def test_refuses_the_pre_release_format(data_dir: Path, old: int) -> None:
    edit(data_dir, ("UPDATE meta SET value = ? WHERE key = 'format_version'", (old,)))
    message = refusal(data_dir)
    assert f"format version {old} was written by a pre-release kvraft" in message


def test_refuses_a_sqlite_database_of_another_application(tmp_path: Path) -> None:
    d = tmp_path / "n3"
    d.mkdir()
    conn = sqlite3.connect(db_file(d))
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    assert "not a kvraft store" in refusal(d)


def test_refuses_a_store_in_use_by_another_open(data_dir: Path) -> None:
    store = open_store(data_dir)
    try:
        assert "in use by another process" in refusal(data_dir)
    finally:
        store.close()
    open_store(data_dir).close()  # the lock went with the close


# -- a damaged file ------------------------------------------------------------


def test_refuses_a_file_that_is_not_a_database(data_dir: Path) -> None:
    db_file(data_dir).write_bytes(b"this is not a database\n" * 500)
    message = refusal(data_dir)
    assert "corrupt: file is not a database" in message


def test_refuses_an_empty_file_instead_of_starting_afresh(data_dir: Path) -> None:
    """A node restarted empty could vote twice in a term; a new store is never an empty file."""
    db_file(data_dir).write_bytes(b"")
    assert "corrupt: empty file" in refusal(data_dir)


@pytest.mark.parametrize("keep", [100, 0.5, -4096], ids=["header", "half", "last-page"])
def test_refuses_a_truncated_file(data_dir: Path, keep: float) -> None:
    raw = db_file(data_dir).read_bytes()
    size = int(len(raw) * keep) if isinstance(keep, float) else keep % len(raw)
    db_file(data_dir).write_bytes(raw[:size])
    message = refusal(data_dir)
    assert re.search(r": corrupt: (database disk image is malformed|quick_check)", message)


def test_refuses_a_damaged_page_found_by_quick_check(data_dir: Path) -> None:
    raw = bytearray(db_file(data_dir).read_bytes())
    page_size = int.from_bytes(raw[16:18], "big")  # SQLite file header, offset 16
    start = raw.find(MARKER + b"25") // page_size * page_size  # the log leaf holding entry 25
    raw[start + 8 : start + 40] = bytes(range(200, 232))  # its cell pointers now point nowhere
    db_file(data_dir).write_bytes(raw)
    assert ": corrupt: quick_check: On tree page" in refusal(data_dir)


def test_refuses_a_missing_table(data_dir: Path) -> None:
    edit(data_dir, ("DROP TABLE log", ()))
    assert ": corrupt: missing table(s) log" in refusal(data_dir)


def test_refuses_a_missing_hard_state_row(data_dir: Path) -> None:
    edit(data_dir, ("DELETE FROM hard_state", ()))
    assert ": corrupt: expected exactly one hard_state row, found 0" in refusal(data_dir)


# -- rows that break the log's invariants (checksums kept valid) --------------


def test_refuses_a_log_with_a_gap(data_dir: Path) -> None:
    edit(data_dir, ("DELETE FROM log WHERE idx = 20", ()))
    assert ": corrupt: log not contiguous: expected index 20, found 21" in refusal(data_dir)


def test_refuses_a_log_that_does_not_start_right_after_the_snapshot(data_dir: Path) -> None:
    edit(data_dir, ("DELETE FROM log WHERE idx = 11", ()))
    assert ": corrupt: log not contiguous: expected index 11, found 12" in refusal(data_dir)


def test_refuses_a_term_that_decreases(data_dir: Path) -> None:
    edit(
        data_dir,
        ("UPDATE log SET term = 1, crc = ? WHERE idx = 32", (entry_crc(1, 32, b"c32"),)),
    )
    assert ": corrupt: log entry 32 has term 1, after term 3" in refusal(data_dir)


def test_refuses_a_commit_index_beyond_the_last_index(data_dir: Path) -> None:
    hs = HardState(3, 2, 41)
    edit(data_dir, ("UPDATE hard_state SET commit_index = 41, crc = ?", (hard_state_crc(hs),)))
    assert ": corrupt: commit index 41 is beyond the last index 40" in refusal(data_dir)


WRONG_TYPES = [
    pytest.param(
        "UPDATE log SET term = 'two' WHERE idx = 12",
        "log entry 12 term has the wrong type (str",
        id="term-as-text",
    ),
    pytest.param(
        "UPDATE log SET command = 'c13' WHERE idx = 13",
        "log entry 13 command has the wrong type (str",
        id="command-as-text",
    ),
    pytest.param(
        "UPDATE log SET crc = x'00' WHERE idx = 14",
        "log entry 14 crc has the wrong type (bytes",
        id="crc-as-blob",
    ),
    pytest.param(
        "UPDATE hard_state SET commit_index = 35.5",
        "hard_state.commit_index has the wrong type (float",
        id="commit-as-real",
    ),
    pytest.param(
        "UPDATE hard_state SET voted_for = 'two'",
        "hard_state.voted_for has the wrong type (str",
        id="vote-as-text",
    ),
    pytest.param(
        "UPDATE snapshot SET file = x'00'",
        "snapshot.file has the wrong type (bytes",
        id="snapshot-file-as-blob",
    ),
    pytest.param(
        "UPDATE snapshot SET size = 'twelve'",
        "snapshot.size has the wrong type (str",
        id="snapshot-size-as-text",
    ),
]


@pytest.mark.parametrize(("sql", "expected"), WRONG_TYPES)
def test_refuses_a_row_of_the_wrong_type(data_dir: Path, sql: str, expected: str) -> None:
    edit(data_dir, (sql, ()))
    assert expected in refusal(data_dir)


# -- flipped bytes the page structure cannot see ------------------------------


def flip_byte_after(data_dir: Path, needle: bytes) -> None:
    raw = bytearray(db_file(data_dir).read_bytes())
    at = raw.find(needle)
    assert at >= 0 and raw.find(needle, at + 1) < 0, "needle must occur once in the file"
    raw[at + len(needle) - 1] ^= 0x01
    db_file(data_dir).write_bytes(raw)


def test_detects_a_flipped_byte_in_a_command(data_dir: Path) -> None:
    flip_byte_after(data_dir, MARKER + b"25")
    assert ": corrupt: log entry 25 checksum mismatch" in refusal(data_dir)


def snapshot_file(data_dir: Path) -> Path:
    (path,) = data_dir.glob("snapshot-*.snap")
    return path


def test_detects_a_flipped_byte_in_the_snapshot(data_dir: Path) -> None:
    path = snapshot_file(data_dir)
    raw = bytearray(path.read_bytes())
    raw[len(MARKER) - 1] ^= 0x01
    path.write_bytes(raw)
    assert ": corrupt: snapshot (index 10) checksum mismatch" in refusal(data_dir)


def test_refuses_a_missing_snapshot_file(data_dir: Path) -> None:
    path = snapshot_file(data_dir)
    path.unlink()
    assert f": corrupt: snapshot (index 10) file {path.name} is missing" in refusal(data_dir)


@pytest.mark.parametrize("change", [-1, +1], ids=["truncated", "extended"])
def test_refuses_a_snapshot_file_of_the_wrong_size(data_dir: Path, change: int) -> None:
    path = snapshot_file(data_dir)
    raw = path.read_bytes()
    path.write_bytes(raw[:-1] if change < 0 else raw + b"x")
    expected = f"file {path.name} has {len(raw) + change} bytes, expected {len(raw)}"
    assert expected in refusal(data_dir)


def test_refuses_a_snapshot_row_naming_a_path(data_dir: Path) -> None:
    """The row names a file in the data dir; anything else (a path, "..") is not trusted."""
    edit(data_dir, ("UPDATE snapshot SET file = '../raft.db'", ()))
    assert "snapshot.file is not a snapshot file name: '../raft.db'" in refusal(data_dir)


def test_a_refused_open_deletes_no_snapshot_file(data_dir: Path) -> None:
    """Cleaning up unrecorded snapshot files waits until the store checks out."""
    recorded = snapshot_file(data_dir)
    stray = data_dir / recorded.name.replace(".snap", ".snap.tmp")
    stray.write_bytes(b"half-written")
    edit(data_dir, ("UPDATE log SET term = 'two' WHERE idx = 12", ()))
    refusal(data_dir)
    assert recorded.exists() and stray.exists()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE hard_state SET voted_for = 1",
        "UPDATE hard_state SET current_term = 4",
        "UPDATE log SET command = NULL WHERE idx = 26",
        "UPDATE log SET term = 3 WHERE idx = 30",
        "UPDATE snapshot SET term = 2",
    ],
)
def test_detects_an_edited_value_by_its_checksum(data_dir: Path, sql: str) -> None:
    edit(data_dir, (sql, ()))
    assert "checksum mismatch" in refusal(data_dir)


def test_a_refused_open_leaves_the_store_usable(data_dir: Path) -> None:
    """A refusal holds no lock and changes nothing: the right node can still open it."""
    refusal(data_dir, node_id=9)
    store = open_store(data_dir)
    assert len(store.load().entries) == 30
    store.close()


def test_refuses_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(StorageError, match="cannot create a store"):
        open_store(path)


def test_refuses_a_missing_seed_configuration(data_dir: Path) -> None:
    """Without its seed a store cannot say who the members were; it is not guessed from --peers."""
    edit(data_dir, ("DELETE FROM meta WHERE key = 'seed_config'", ()))
    assert "meta.seed_config is NoneType, expected a blob" in refusal(data_dir)


def test_refuses_an_edited_seed_configuration(data_dir: Path) -> None:
    """A seed rewritten behind the store's back (another member list) fails its checksum."""
    other = membership.encode(Membership.of_voters([1, 2, 3, 4]))
    edit(data_dir, ("UPDATE meta SET value = ? WHERE key = 'seed_config'", (other,)))
    assert "meta.seed_config checksum mismatch" in refusal(data_dir)
