"""Settings of the consensus core. Time is in ticks; only the driver knows seconds."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RaftConfig:
    """Configuration of one :class:`~kvraft.raft.core.RaftCore`.

    Defaults assume the driver ticks every 10 ms: elections after 150-300 ms of
    silence, heartbeats every 50 ms, so a new leader takes over well under a
    second after one dies.
    """

    node_id: int
    peers: tuple[int, ...]  # every member, node_id included
    # A follower campaigns after a random timeout in [election_timeout_ticks, 2x).
    election_timeout_ticks: int = 15
    heartbeat_interval_ticks: int = 5
    # Raft thesis §9.6: a candidate first asks whether it would win (no term bump).
    pre_vote: bool = True
    # Raft thesis §6.2: a leader that heard from no majority in an election timeout steps down.
    check_quorum: bool = True
    max_entries_per_message: int = 512
    max_bytes_per_message: int = 1024 * 1024
    # AppendEntries in flight to one follower before the leader waits for replies.
    max_inflight_messages: int = 64
    # InstallSnapshot chunk size.
    snapshot_chunk_bytes: int = 1024 * 1024
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def __post_init__(self) -> None:
        if self.node_id not in self.peers:
            raise ValueError(f"node {self.node_id} is not in peers {self.peers}")
        if len(set(self.peers)) != len(self.peers):
            raise ValueError(f"duplicate peer ids in {self.peers}")
        if self.heartbeat_interval_ticks >= self.election_timeout_ticks:
            raise ValueError("heartbeat interval must be shorter than the election timeout")
