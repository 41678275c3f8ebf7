"""Terms and indexes at MAX_RAFT_INT (2^62) round-trip through SQLite; nothing past it is
ever written, and a store holding more is refused on open (one line), not used.

Reference: issue 11 item 3 (integers past storage's range)
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from tests.raft.harness import make_config

from kvraft.errors import StorageError
from kvraft.raft.core import RaftCore
from kvraft.raft.messages import MAX_RAFT_INT, Entry
from kvraft.raft.ready import HardState, PersistentState, Snapshot
from kvraft.storage.sqlite import SqliteStorage

EDGE = MAX_RAFT_INT


def open_store(data_dir: Path) -> SqliteStorage:
    return SqliteStorage.open(data_dir, cluster_id="unit", node_id=1)


def test_a_term_and_a_commit_at_the_bound_round_trip(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    entry = Entry(term=EDGE, index=1, command=b"c")
    store.save(HardState(current_term=EDGE, voted_for=2, commit_index=1), [entry], None)
    store.close()

    loaded = open_store(tmp_path).load()

    assert loaded.hard_state == HardState(current_term=EDGE, voted_for=2, commit_index=1)
    assert loaded.entries == (entry,)


def test_a_snapshot_at_the_bound_round_trips(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    snapshot = Snapshot(index=EDGE, term=EDGE, data=b"state")
    store.save(HardState(current_term=EDGE, commit_index=EDGE), [], snapshot)
    store.close()

    assert open_store(tmp_path).load().snapshot == snapshot


@pytest.mark.parametrize(
    ("hard_state", "entries", "snapshot", "what"),
    [
        (HardState(current_term=EDGE + 1), [], None, "current_term"),
        (None, [Entry(term=EDGE + 1, index=1, command=None)], None, "entry term"),
        (HardState(EDGE, None, 0), [], Snapshot(EDGE + 1, 1, b"s"), "snapshot index"),
        (HardState(EDGE, None, 0), [], Snapshot(5, EDGE + 1, b"s"), "snapshot term"),
    ],
)
def test_a_value_past_the_bound_is_refused_and_nothing_is_written(
    tmp_path: Path,
    hard_state: HardState | None,
    entries: list[Entry],
    snapshot: Snapshot | None,
    what: str,
) -> None:
    store = open_store(tmp_path)
    store.save(HardState(current_term=3), [], None)
    with pytest.raises(ValueError, match=f"{what} {EDGE + 1} is past the bound"):
        store.save(hard_state, entries, snapshot)
    store.close()

    assert open_store(tmp_path).load() == PersistentState(HardState(current_term=3))


def test_a_stored_term_past_the_bound_is_refused_on_open(tmp_path: Path) -> None:
    """A store written before the bound existed (a term of 2^63 - 1 spread by a forged
    message) is refused with one line naming the field, never loaded."""
    open_store(tmp_path).close()
    with sqlite3.connect(tmp_path / "raft.db") as conn:
        conn.execute("UPDATE hard_state SET current_term = ?", (2**63 - 1,))
    conn.close()

    with pytest.raises(
        StorageError, match=r"hard_state\.current_term is .* past the bound"
    ) as info:
        open_store(tmp_path)
    assert "\n" not in str(info.value)


def test_a_node_at_the_bound_through_sqlite_campaigns_never_and_writes_nothing_past_it(
    tmp_path: Path,
) -> None:
    """The core at term 2^62 over real storage: every Ready it produces is saved, none
    holds a term past the bound, and a restart loads the same valid state."""
    store = open_store(tmp_path)
    store.save(HardState(current_term=EDGE), [], None)
    core = RaftCore(make_config(1, (1, 2, 3), pre_vote=False), store.load())
    core.campaign()
    for _ in range(100):
        core.tick()
        while core.has_ready():
            ready = core.ready()
            store.save(ready.hard_state, ready.entries, ready.snapshot)
            core.advance(ready)
    store.close()

    assert open_store(tmp_path).load().hard_state.current_term == EDGE
