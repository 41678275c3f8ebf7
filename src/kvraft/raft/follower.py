"""The follower's half of log replication: what a node does with a leader's messages.

Seam: :class:`~kvraft.raft.core.RaftCore` decides whom to follow (terms, roles,
the election timer) and hands a :class:`Follower` each AppendEntries and
InstallSnapshot of the leader it follows. The Follower checks and repairs the
log (Raft §5.3), moves the core's ``commit_index`` as far as the leader's
allows (Figure 2, AppendEntries rule 5), assembles snapshot chunks (Figure 13,
via :mod:`~kvraft.raft.snapshot`) and has the core install a complete one, and
answers. It also answers messages of a stale leader, whatever our role, so that
leader learns it was deposed (§5.1).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from kvraft.raft import membership
from kvraft.raft.log import NO_TERM
from kvraft.raft.messages import (
    AppendEntries,
    AppendEntriesReply,
    InstallSnapshot,
    InstallSnapshotReply,
    Message,
)
from kvraft.raft.ready import Snapshot
from kvraft.raft.snapshot import SnapshotReceiver

if TYPE_CHECKING:
    from kvraft.raft.core import RaftCore

logger = logging.getLogger("kvraft.raft")


class Follower:
    """Replication as the receiving side; one per core, whatever its role.

    ``install(snapshot, leader)`` is the core's: a complete snapshot replaces
    its log and state machine, which the core hands to the driver.
    """

    def __init__(
        self,
        core: RaftCore,
        send: Callable[[Message], None],
        install: Callable[[Snapshot, int], None],
    ) -> None:
        self.core = core
        self.id = core.id
        self.log = core.log
        self._send = send
        self._install = install
        self._receiver = SnapshotReceiver()

    def handle_append_entries(self, msg: AppendEntries) -> None:
        """An AppendEntries of the leader we follow, in our term."""
        core = self.core
        result = self.log.try_append(
            msg.prev_log_index, msg.prev_log_term, msg.entries, core.commit_index
        )
        if not result.success:
            self._reply_append(
                msg.src,
                False,
                msg.prev_log_index,
                result.conflict_index,
                result.conflict_term,
                read_round=msg.read_round,
            )
            return
        # Thesis §4.1: a configuration is in force once appended; one that a
        # repair truncated away is no longer (the previous one is again).
        core.config_log.sync(self.log.term, msg.entries)
        # Figure 2, AppendEntries rule 5: commitIndex = min(leaderCommit, last new entry).
        if msg.leader_commit > core.commit_index:
            core.commit_index = max(core.commit_index, min(msg.leader_commit, result.match_index))
        # The read round is echoed (kvraft.raft.read_index): we follow this leader now.
        self._reply_append(msg.src, True, result.match_index, read_round=msg.read_round)

    def handle_install_snapshot(self, msg: InstallSnapshot) -> None:
        """A chunk of the snapshot of the leader we follow, in our term."""
        if msg.last_included_index <= self.core.commit_index:
            # We already hold everything up to there, committed.
            self._receiver.reset()
            self._reply_snapshot(msg, msg.offset + len(msg.data), done=True)
            return
        next_offset, framed = self._receiver.receive(msg)
        snapshot = None
        if framed is not None:
            snapshot, problem = self._unframe(framed, msg.checksum)
            if snapshot is None:
                # Nothing was installed or handed to the driver, so nothing bad
                # is persisted; next offset 0 makes the leader start over.
                logger.warning(
                    "n%d [term %d] refused the snapshot at index %d from n%d: %s;"
                    " asking for it again",
                    self.id,
                    self.core.current_term,
                    framed.index,
                    msg.src,
                    problem,
                )
                self._reply_snapshot(msg, 0, done=False)
                return
            assert snapshot is not None
            self._install(snapshot, msg.src)
        self._reply_snapshot(msg, next_offset, done=snapshot is not None)

    def _unframe(self, framed: Snapshot, checksum: int) -> tuple[Snapshot | None, str]:
        """The snapshot to install from the assembled bytes, or None and why it must not be.

        Verified before the core installs it (and so before the driver
        persists it): the checksum the leader computed over the whole
        transfer, its configuration frame (:func:`membership.frame_snapshot`),
        then whether the state machine can decode its data (the config's validator).
        """
        actual = zlib.crc32(framed.data)
        if actual != checksum:
            return None, (
                f"checksum {actual:#010x} of {len(framed.data)} bytes, expected {checksum:#010x}"
            )
        try:
            config, data = membership.unframe_snapshot(framed.data)
        except ValueError as exc:
            return None, f"its configuration: {exc}"
        validator = self.core.config.snapshot_validator
        if validator is not None and not validator(data):
            return None, f"the state machine cannot decode its {len(data)} bytes"
        return Snapshot(framed.index, framed.term, data, config), ""

    def refuse_append(self, msg: AppendEntries) -> None:
        """An AppendEntries of an earlier term: the deposed leader learns ours and steps down."""
        self._reply_append(msg.src, False, msg.prev_log_index)

    def refuse_snapshot(self, msg: InstallSnapshot) -> None:
        """An InstallSnapshot of an earlier term: its sender learns ours."""
        self._reply_snapshot(msg, 0, done=False)

    def _reply_append(
        self,
        leader: int,
        success: bool,
        match_index: int,
        conflict_index: int = 0,
        conflict_term: int = NO_TERM,
        *,
        read_round: int = 0,
    ) -> None:
        # On a refusal, match_index carries the refused prev_log_index, so the
        # leader can tell a stale refusal from a current one.
        self._send(
            AppendEntriesReply(
                src=self.id,
                dst=leader,
                term=self.core.current_term,
                success=success,
                match_index=match_index,
                conflict_index=conflict_index,
                conflict_term=conflict_term,
                read_round=read_round,
            )
        )

    def _reply_snapshot(self, msg: InstallSnapshot, next_offset: int, *, done: bool) -> None:
        self._send(
            InstallSnapshotReply(
                src=self.id,
                dst=msg.src,
                term=self.core.current_term,
                last_included_index=msg.last_included_index,
                next_offset=next_offset,
                done=done,
            )
        )
