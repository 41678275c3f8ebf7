"""Settings of the consensus core. Time is in ticks; only the driver knows seconds.

This module is the one home of the timing defaults: the tick counts below are
:class:`RaftConfig`'s defaults, and the server's options and ``kvraft server``
flags take theirs from here too.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

# The driver's tick, in seconds. The core never reads it (it only counts
# ticks); it is defined here, beside the tick counts, because those are tuned
# for it: at 10 ms a tick, elections after 150-300 ms of silence, so a new
# leader takes over well under a second after one dies; heartbeats every
# 30 ms, five to ten per election timeout, so a lossy network rarely starves
# a follower.
DEFAULT_TICK_INTERVAL_S = 0.010
DEFAULT_ELECTION_TIMEOUT_TICKS = 15
DEFAULT_HEARTBEAT_INTERVAL_TICKS = 3
DEFAULT_CHECK_QUORUM = True
# A leader steps down after this many election timeouts without hearing from a
# majority (with check-quorum, unless check_quorum_ticks says otherwise).
CHECK_QUORUM_ELECTION_TIMEOUTS = 2


@dataclass(frozen=True)
class RaftConfig:
    """Configuration of one :class:`~kvraft.raft.core.RaftCore`.

    The timing defaults assume the driver ticks every
    ``DEFAULT_TICK_INTERVAL_S`` (see the module's constants).
    """

    node_id: int
    # The voters a new cluster starts with, node_id included; () for a node
    # that joins a running cluster, whose configuration it learns from the
    # leader. A server passes the seed its data dir was created with (the
    # bootstrap's ``--peers``), never a restart's. Only a seed: once a leader has
    # written a configuration into the log, the log is the authority
    # (kvraft.raft.membership).
    peers: tuple[int, ...]
    # The addresses the seed members advertise (the bootstrap's ``--peers``),
    # for the configuration entry a first change writes.
    seed_addresses: tuple[tuple[int, str], ...] = ()
    # A follower campaigns after a random timeout in [election_timeout_ticks, 2x).
    election_timeout_ticks: int = DEFAULT_ELECTION_TIMEOUT_TICKS
    heartbeat_interval_ticks: int = DEFAULT_HEARTBEAT_INTERVAL_TICKS
    # Raft thesis §9.6: a candidate first asks whether it would win (no term bump).
    pre_vote: bool = True
    # Raft thesis §6.2: a leader that heard from no majority in a while steps down.
    check_quorum: bool = DEFAULT_CHECK_QUORUM
    # That while: 0 means CHECK_QUORUM_ELECTION_TIMEOUTS election timeouts. Longer
    # than the followers' lease (one election timeout) so that heavy message loss
    # does not depose a healthy leader; reads go through the log or confirm with
    # a read-index round (never a lease), so no safety rests on it.
    check_quorum_ticks: int = 0
    max_entries_per_message: int = 512
    max_bytes_per_message: int = 1024 * 1024
    # AppendEntries in flight to one follower before the leader waits for replies.
    max_inflight_messages: int = 64
    # InstallSnapshot chunk size.
    snapshot_chunk_bytes: int = 1024 * 1024
    # Whether the state machine can restore from a received snapshot's data:
    # checked (after the checksum) before the core installs it, so a snapshot
    # the application cannot decode is refused and re-sent instead of being
    # persisted and failing at restore, and again at every restart. Pure and
    # synchronous (the core stays sans-I/O); None accepts everything.
    snapshot_validator: Callable[[bytes], bool] | None = field(default=None, compare=False)
    rng: random.Random = field(default_factory=random.Random, compare=False)
    # A learner is promoted only within this many entries of the leader's
    # last index (thesis §4.2.1: a voter that cannot keep up would stall
    # commits); a promotion of a learner further behind is refused.
    max_promotion_lag_entries: int = 1000

    @property
    def check_quorum_timeout_ticks(self) -> int:
        """Ticks in which a leader must hear from a majority (see ``check_quorum_ticks``)."""
        return self.check_quorum_ticks or (
            CHECK_QUORUM_ELECTION_TIMEOUTS * self.election_timeout_ticks
        )

    def __post_init__(self) -> None:
        if self.peers and self.node_id not in self.peers:
            raise ValueError(f"node {self.node_id} is not in peers {self.peers}")
        if len(set(self.peers)) != len(self.peers):
            raise ValueError(f"duplicate peer ids in {self.peers}")
        if self.heartbeat_interval_ticks >= self.election_timeout_ticks:
            raise ValueError("heartbeat interval must be shorter than the election timeout")
