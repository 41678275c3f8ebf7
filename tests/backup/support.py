"""A small state snapshot and its backup file, for the backup tests."""

from __future__ import annotations

from pathlib import Path

from kvraft import backup_file
from kvraft.server import state_snapshot
from kvraft.server.kvstore import KVStore
from kvraft.server.sessions import Sessions

CLUSTER_ID = "old-cluster"


def state_bytes(keys: int = 5) -> bytes:
    """A state snapshot holding ``keys`` keys, one write each (revision ``keys``)."""
    store = KVStore()
    for i in range(keys):
        store.write(f"k{i}", f"v{i}", i + 1)
        store.set_revision(i + 1)
    return state_snapshot.encoder(Sessions(), store)()


def write_backup(path: Path, data: bytes | None = None, *, index: int = 42, term: int = 3) -> bytes:
    """Write a valid backup of ``data`` (default: state_bytes()) to ``path``; its bytes."""
    data = state_bytes() if data is None else data
    header = backup_file.header_for(CLUSTER_ID, index, term, 5, data)
    backup_file.write(path, header, data)
    return path.read_bytes()
