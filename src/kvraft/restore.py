"""``kvraft snapshot restore``: seed a fresh data dir of a NEW cluster from a backup file.

The backup is checked whole first (header, checksums, the state snapshot
decodes), and the data dir must be absent or empty. Then a new
:class:`~kvraft.storage.sqlite.SqliteStorage` is created for node ``--id``
of the new cluster id and one save stores the backup's state as its
snapshot at the backup's index and term, with the term as current term (no
vote) and the index as commit index: the node starts as if it had compacted
its log up to there, and the new cluster's first leader is elected in a
later term and goes on from index + 1.

Why a new cluster id, always (a fresh random one unless ``--cluster-id``
names one, never the backup's own): the restored nodes share the old
cluster's indexes and terms but not its later log, so a node of the old
cluster that talked to them could make them diverge silently. Peers of
another cluster id are refused by the peer handshake, and a data dir opened
with another cluster id is refused by the storage, so the two can never mix.

Membership is not in the data dir (it is ``--peers`` at start); ``--peers``
is checked here (``--id`` must be one of them) so that a typo is caught
before the servers start, which they must with the same ``--peers`` and the
new ``--cluster-id``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from kvraft.backup_file import BackupHeader, BadBackup
from kvraft.backup_file import read as read_backup
from kvraft.raft.membership import Membership
from kvraft.raft.ready import HardState, Snapshot
from kvraft.server import state_snapshot
from kvraft.server.kvstore import BadSnapshot
from kvraft.storage.sqlite import SqliteStorage


class RestoreRefused(Exception):
    """The restore would be wrong (a used data dir, the old cluster's id, a bad --id)."""


@dataclass(frozen=True)
class Restored:
    """What a restore wrote."""

    header: BackupHeader
    cluster_id: str
    node_id: int
    keys: int


def new_cluster_id() -> str:
    """A fresh cluster id for a restored cluster."""
    return f"restored-{secrets.token_hex(6)}"


def check_backup(path: Path) -> tuple[BackupHeader, bytes, int]:
    """The header, data and key count of a backup that checks out and decodes; BadBackup else."""
    header, data = read_backup(path)
    try:
        _, store = state_snapshot.decode(data)
    except BadSnapshot as exc:
        raise BadBackup(f"{path}: the snapshot does not decode: {exc}") from None
    return header, data, len(store)


def restore(
    path: Path, data_dir: Path, *, node_id: int, peers: dict[int, str], cluster_id: str
) -> Restored:
    """Seed ``data_dir`` for node ``node_id`` of cluster ``cluster_id`` from the backup at ``path``.

    Raises BadBackup (the file), RestoreRefused (the arguments, the data dir),
    StorageError or OSError (the disk); nothing is written unless all checks pass.
    """
    header, data, keys = check_backup(path)
    if node_id not in peers:
        raise RestoreRefused(f"--id {node_id} is not one of --peers ({sorted(peers)})")
    if cluster_id == header.cluster_id:
        raise RestoreRefused(
            f"--cluster-id {cluster_id!r} is the backed-up cluster's own: a restore"
            " needs a new cluster id, so the two clusters can never mix"
        )
    data_dir = Path(data_dir)
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise RestoreRefused(f"{data_dir}: not an empty directory; restore only seeds a fresh one")
    # The new cluster's members are --peers: the seed, since the backup's
    # snapshot carries no configuration of its own.
    seed = Membership.of_voters(sorted(peers), peers)
    storage = SqliteStorage.open(data_dir, cluster_id=cluster_id, node_id=node_id, seed=seed)
    try:
        storage.save(
            HardState(current_term=header.term, voted_for=None, commit_index=header.index),
            [],
            Snapshot(header.index, header.term, data),
        )
    finally:
        storage.close()
    return Restored(header, cluster_id, node_id, keys)
