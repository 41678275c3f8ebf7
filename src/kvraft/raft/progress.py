"""A leader's replication state for one follower (after etcd raft's ``tracker.Progress``).

Seam: *how fast* to send to one follower lives here; *what* to send (entries,
snapshot chunks) is the core's business. A follower is in one of three states:

- ``PROBE``: the leader does not know where the follower's log matches its own.
  It sends one AppendEntries at a time and waits for the answer (or the next
  heartbeat) before sending another; a rejection moves ``next_index`` back.
- ``REPLICATE``: the logs match up to ``match_index``. The leader sends
  optimistically, advancing ``next_index`` as it sends, with up to
  ``max_inflight`` AppendEntries unanswered (pipelining, thesis §10.2.2).
- ``SNAPSHOT``: the follower needs entries the leader has compacted away; the
  leader streams its snapshot in chunks, one chunk per round trip.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


@dataclass(slots=True)
class Progress:
    """What the leader knows about one follower's log."""

    # Invariant: match_index < next_index.
    match_index: int
    next_index: int
    max_inflight: int
    state: ProgressState = ProgressState.PROBE
    # PROBE: an AppendEntries was sent and neither answered nor timed out (heartbeat).
    probe_sent: bool = False
    # REPLICATE: the last index of each unanswered AppendEntries, oldest first.
    inflight: deque[int] = field(default_factory=deque)
    # Check-quorum (thesis §6.2): heard from this follower in the current election timeout.
    recent_active: bool = False
    # REPLICATE: match_index at the last heartbeat, and how many heartbeats in a
    # row found it unchanged with entries in flight (a stalled pipeline).
    match_at_heartbeat: int = 0
    stalled_heartbeats: int = 0
    # The highest commit index sent in an AppendEntries, to tell a new one promptly.
    commit_sent: int = 0
    # Read-index rounds (kvraft.raft.read_index): the latest round id sent to this
    # follower, and the highest it echoed in our term (an ack of every round up to it).
    read_sent: int = 0
    read_acked: int = 0
    # SNAPSHOT: the index of the snapshot being sent and the next byte to send.
    snapshot_index: int = 0
    snapshot_offset: int = 0
    # SNAPSHOT: heartbeats since the chunk in flight was sent, unanswered. Chunks
    # are paced by acknowledgements; a heartbeat retransmits only a stalled one.
    snapshot_heartbeats: int = 0

    def is_paused(self) -> bool:
        """Whether the leader must wait before sending this follower more entries."""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= self.max_inflight
        return True

    def become_probe(self, next_index: int | None = None) -> None:
        """Probe from ``next_index`` (by default, where we were about to send)."""
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight.clear()
        if next_index is not None:
            self.next_index = next_index
        self.next_index = max(self.next_index, self.match_index + 1)

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.probe_sent = False
        self.inflight.clear()
        self.stalled_heartbeats = 0
        self.next_index = self.match_index + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.probe_sent = False
        self.inflight.clear()
        self.snapshot_index = snapshot_index
        self.snapshot_offset = 0
        self.snapshot_heartbeats = 0

    def sent(self, last_index: int | None) -> None:
        """An AppendEntries went out, carrying entries up to ``last_index`` (None: no entries)."""
        if self.state is ProgressState.PROBE:
            self.probe_sent = True
        elif self.state is ProgressState.REPLICATE and last_index is not None:
            # Optimistic: assume it arrives; a refusal sends us back to probing.
            self.next_index = last_index + 1
            self.inflight.append(last_index)

    def update_match(self, match_index: int) -> bool:
        """The follower acknowledged its log matches up to ``match_index``; False if stale."""
        if match_index <= self.match_index:
            return False
        self.match_index = match_index
        self.next_index = max(self.next_index, match_index + 1)
        while self.inflight and self.inflight[0] <= match_index:
            self.inflight.popleft()
        return True

    def reject(self, rejected_index: int, hint_next: int) -> bool:
        """The follower refused an AppendEntries at ``prev_log_index == rejected_index``.

        ``hint_next`` is where the fast-backtracking hint says to try next.
        Returns False for a stale refusal (one that predates what the leader
        learned since), which must not move ``next_index`` back.
        """
        if self.state is ProgressState.REPLICATE:
            if rejected_index <= self.match_index:
                return False
        elif self.state is ProgressState.PROBE:
            if rejected_index != self.next_index - 1:
                return False
        else:
            return False
        # Always move strictly back (progress) but never at or below the match.
        self.next_index = max(min(hint_next, rejected_index), self.match_index + 1)
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight.clear()
        return True
