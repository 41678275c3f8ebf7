"""A follower's assembly of a snapshot that arrives in InstallSnapshot chunks.

Seam: byte bookkeeping only (which chunk is next, from which transfer); what to
do with a complete snapshot is the core's business. A transfer is identified by
its sender, the snapshot's index and term and its checksum; a chunk at offset 0 (re)starts
one, any other chunk must continue exactly where the assembled bytes end, and
anything else (stale, duplicated, reordered, another leader's) is refused with
the offset we want next, so the leader can resume or restart.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvraft.raft.messages import InstallSnapshot
from kvraft.raft.ready import Snapshot


@dataclass(slots=True)
class _Transfer:
    src: int
    index: int
    term: int
    checksum: int
    data: bytearray


class SnapshotReceiver:
    """Assembles one snapshot transfer at a time."""

    def __init__(self) -> None:
        self._transfer: _Transfer | None = None

    def reset(self) -> None:
        """Forget a partial transfer (e.g. we already hold what it carries)."""
        self._transfer = None

    def receive(self, msg: InstallSnapshot) -> tuple[int, Snapshot | None]:
        """Take one chunk: the offset wanted next, and the snapshot once complete.

        The complete snapshot is not verified here (see ``Follower``).
        """
        transfer = self._transfer
        key = (msg.src, msg.last_included_index, msg.last_included_term, msg.checksum)
        if msg.offset == 0:
            transfer = _Transfer(*key, bytearray())
            self._transfer = transfer
        elif (
            transfer is None
            or (transfer.src, transfer.index, transfer.term, transfer.checksum) != key
        ):
            return 0, None
        elif msg.offset != len(transfer.data):
            return len(transfer.data), None
        transfer.data += msg.data
        if not msg.done:
            return len(transfer.data), None
        self._transfer = None
        return len(transfer.data), Snapshot(transfer.index, transfer.term, bytes(transfer.data))
