"""Seeding a data dir from a backup: it opens at the backup's snapshot; refusals write nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvraft import backup_file
from kvraft.backup_file import BadBackup
from kvraft.errors import StorageError
from kvraft.raft.ready import HardState
from kvraft.restore import RestoreRefused, new_cluster_id, restore
from kvraft.server import state_snapshot
from kvraft.storage.sqlite import SqliteStorage

from .support import CLUSTER_ID, state_bytes, write_backup

PEERS = {0: "127.0.0.1:1", 1: "127.0.0.1:2", 2: "127.0.0.1:3"}


def test_a_restored_store_holds_the_backup_as_its_snapshot(tmp_path: Path) -> None:
    data = state_bytes(7)
    write_backup(tmp_path / "b.kvb", data, index=42, term=3)

    done = restore(tmp_path / "b.kvb", tmp_path / "n1", node_id=1, peers=PEERS, cluster_id="new")

    assert (done.keys, done.header.index, done.cluster_id) == (7, 42, "new")
    storage = SqliteStorage.open(tmp_path / "n1", cluster_id="new", node_id=1)
    try:
        state = storage.load()
    finally:
        storage.close()
    assert state.snapshot is not None
    assert (state.snapshot.index, state.snapshot.term, state.snapshot.data) == (42, 3, data)
    assert state.hard_state == HardState(current_term=3, voted_for=None, commit_index=42)
    assert state.entries == ()
    assert len(state_snapshot.decode(state.snapshot.data)[1]) == 7
    with pytest.raises(StorageError, match="cluster"):
        SqliteStorage.open(tmp_path / "n1", cluster_id=CLUSTER_ID, node_id=1)


def test_an_existing_empty_dir_is_seeded(tmp_path: Path) -> None:
    write_backup(tmp_path / "b.kvb")
    (tmp_path / "n0").mkdir()
    restore(tmp_path / "b.kvb", tmp_path / "n0", node_id=0, peers=PEERS, cluster_id="new")
    assert (tmp_path / "n0" / "raft.db").exists()


@pytest.mark.parametrize(
    ("node_id", "cluster_id", "message"),
    [(3, "new", "--id 3 is not one of --peers"), (0, CLUSTER_ID, "needs a new cluster id")],
)
def test_a_wrong_id_or_the_old_cluster_id_is_refused(
    tmp_path: Path, node_id: int, cluster_id: str, message: str
) -> None:
    write_backup(tmp_path / "b.kvb")
    with pytest.raises(RestoreRefused, match=message):
        restore(
            tmp_path / "b.kvb", tmp_path / "n", node_id=node_id, peers=PEERS, cluster_id=cluster_id
        )
    assert not (tmp_path / "n").exists()


def test_a_non_empty_data_dir_is_refused_and_left_alone(tmp_path: Path) -> None:
    write_backup(tmp_path / "b.kvb")
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "keep").write_text("mine")
    with pytest.raises(RestoreRefused, match="not an empty directory"):
        restore(tmp_path / "b.kvb", tmp_path / "n", node_id=0, peers=PEERS, cluster_id="new")
    assert [p.name for p in (tmp_path / "n").iterdir()] == ["keep"]


def test_a_backup_whose_snapshot_does_not_decode_is_refused(tmp_path: Path) -> None:
    data = b"\x93\x03not a state snapshot"
    backup_file.write(tmp_path / "b.kvb", backup_file.header_for("old", 5, 1, 0, data), data)
    with pytest.raises(BadBackup, match="does not decode"):
        restore(tmp_path / "b.kvb", tmp_path / "n", node_id=0, peers=PEERS, cluster_id="new")
    assert not (tmp_path / "n").exists()


def test_new_cluster_ids_are_fresh() -> None:
    assert new_cluster_id() != new_cluster_id()
