"""A server process whose storage fails stops and reports why (fail-stop), rather than
living on with a dead Raft loop that answers nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kvraft.errors import StorageError
from kvraft.server import process
from kvraft.server.options import ServerOptions
from kvraft.storage.sqlite import SqliteStorage
from kvraft.testing import processes


def test_a_storage_failure_ends_the_server_with_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single node's disk fails as it saves its vote for itself: ``_serve`` returns by
    raising that StorageError (``kvraft server`` prints it and exits 1), and
    the data dir is released (it opens again)."""
    port = processes.reserve_port()
    address = f"127.0.0.1:{port}"
    options = ServerOptions(
        node_id=0,
        listen=address,
        peers={0: address},
        data_dir=tmp_path,
        peer_secret=b"process-failure-test-secret",
    )

    def failing_save(self: SqliteStorage, *args: object) -> None:
        raise StorageError(f"{self.path}: save failed: disk I/O error")

    monkeypatch.setattr(SqliteStorage, "save", failing_save)
    try:
        with pytest.raises(StorageError, match="save failed: disk I/O error"):
            asyncio.run(asyncio.wait_for(process._serve(options), timeout=30))
    finally:
        processes.release_ports([port])
    # Once the process has stopped, the store is closed: the next start can open it.
    SqliteStorage.open(tmp_path, cluster_id=options.cluster_id, node_id=0).close()
