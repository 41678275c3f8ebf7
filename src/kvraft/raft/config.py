"""Settings of the consensus core. Time is in ticks; only the driver knows seconds."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RaftConfig:
    """Configuration of one :class:`~kvraft.raft.core.RaftCore`.

    Defaults assume the driver ticks every 10 ms: elections after 150-300 ms of
    silence, so a new leader takes over well under a second after one dies;
    heartbeats every 30 ms, five to ten per election timeout, so a lossy network
    rarely starves a follower.
    """

    node_id: int
    peers: tuple[int, ...]  # every member, node_id included
    # A follower campaigns after a random timeout in [election_timeout_ticks, 2x).
    election_timeout_ticks: int = 15
    heartbeat_interval_ticks: int = 3
    # Raft thesis §9.6: a candidate first asks whether it would win (no term bump).
    pre_vote: bool = True
    # Raft thesis §6.2: a leader that heard from no majority in a while steps down.
    check_quorum: bool = True
    # That while: 0 means twice the election timeout. Longer than the followers'
    # lease (one election timeout) so that heavy message loss does not depose a
    # healthy leader; reads go through the log, so no safety rests on it.
    check_quorum_ticks: int = 0
    max_entries_per_message: int = 512
    max_bytes_per_message: int = 1024 * 1024
    # AppendEntries in flight to one follower before the leader waits for replies.
    max_inflight_messages: int = 64
    # InstallSnapshot chunk size.
    snapshot_chunk_bytes: int = 1024 * 1024
    rng: random.Random = field(default_factory=random.Random, compare=False)

    @property
    def check_quorum_timeout_ticks(self) -> int:
        """Ticks in which a leader must hear from a majority (see ``check_quorum_ticks``)."""
        return self.check_quorum_ticks or 2 * self.election_timeout_ticks

    def __post_init__(self) -> None:
        if self.node_id not in self.peers:
            raise ValueError(f"node {self.node_id} is not in peers {self.peers}")
        if len(set(self.peers)) != len(self.peers):
            raise ValueError(f"duplicate peer ids in {self.peers}")
        if self.heartbeat_interval_ticks >= self.election_timeout_ticks:
            raise ValueError("heartbeat interval must be shorter than the election timeout")
