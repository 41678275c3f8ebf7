"""Cores and drivers with a planted bug each, to prove the simulators' checkers catch them.

Each is a one-rule violation that an unlucky implementation could make: of
the paper, in a core; of the durability order (Raft thesis §3.8), in the
driver; of the lease keeper's rules (``kvraft.server.lease_keeper``), in the
leader's lease clock. The simulator must report the property it breaks
within a few seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kvraft.raft import quorum
from kvraft.raft.config import RaftConfig
from kvraft.raft.core import RaftCore
from kvraft.raft.election import Election
from kvraft.raft.leader import Leader
from kvraft.raft.log import RaftLog
from kvraft.raft.membership import Change, ChangeRefused
from kvraft.raft.messages import Entry, Message, RequestVote, TimeoutNow
from kvraft.raft.ready import PersistentState, Ready
from kvraft.server.lease_keeper import LeaseKeeper
from kvraft.server.node import RaftNode


class DoubleVoteCore(RaftCore):
    """Grants every up-to-date candidate, even a second one in the same term (breaks §5.2)."""

    def _can_grant_vote(self, msg: RequestVote) -> bool:
        return (msg.last_log_term, msg.last_log_index) >= (self.log.last_term, self.log.last_index)


class StaleLogVoteCore(RaftCore):
    """Votes without comparing logs (breaks the election restriction, §5.4.1)."""

    def _can_grant_vote(self, msg: RequestVote) -> bool:
        return (
            self.voted_for == msg.src
            or (self.voted_for is None and self.leader_id is None)
            or (msg.pre_vote and msg.term > self.current_term)
        )


class _KeepSuffixLog(RaftLog):
    """Overwrites a conflicting entry but keeps the entries after it (breaks §5.3)."""

    def truncate_and_append(self, entries: Sequence[Entry]) -> None:
        first = entries[0].index
        if first > self.last_index:
            super().truncate_and_append(entries)
            return
        for entry in entries:
            offset = entry.index - self.snapshot_index - 1
            if offset < len(self._entries):
                self._entries[offset] = (entry.term, entry.command)
            else:
                self._entries.append((entry.term, entry.command))
        self.unstable = min(self.unstable, first)
        self.persisted = min(self.persisted, first - 1)


class KeepSuffixCore(RaftCore):
    def __init__(self, config: RaftConfig, state: PersistentState) -> None:
        super().__init__(config, state)
        self.log.__class__ = _KeepSuffixLog


class _EarlyTimeoutNowLeader(Leader):
    """Sends TimeoutNow without waiting for the target to catch up (breaks thesis §3.10)."""

    def maybe_send_timeout_now(self) -> bool:
        transfer = self.transfer
        if transfer is None:
            return False
        self._send(TimeoutNow(src=self.id, dst=transfer.target, term=self.term))
        transfer.timeout_now_sent += 1
        return True


class EarlyTimeoutNowCore(RaftCore):
    def _become_leader(self) -> None:
        super()._become_leader()
        assert self.leader is not None
        self.leader.__class__ = _EarlyTimeoutNowLeader


class ProposeInTransferCore(RaftCore):
    """Keeps taking proposals while a transfer runs (breaks thesis §3.10)."""

    def propose(self, command: bytes) -> tuple[int, int] | None:
        leader = self.leader
        if leader is None or leader.transfer is None:
            return super().propose(command)
        transfer, leader.transfer = leader.transfer, None
        try:
            return super().propose(command)
        finally:
            leader.transfer = transfer


class _ReuseReadRoundLeader(Leader):
    """Gives every read round the same id (breaks read-index rule 4; etcd #20418): an
    acknowledgement of an old round confirms a new one, so a leader deposed while
    paused answers from its stale commit index before it learns of the new term."""

    def _start_read_round(self) -> bool:
        if not self.read_round_due():
            return False
        round_id = max(1, self.core.read_rounds_drawn)
        self.core.read_rounds_drawn = round_id
        self.reads.last_round = round_id - 1  # let the bookkeeping take the same id again
        self.reads.start_round(round_id, self.core.commit_index)
        self.send_to_all(allow_empty=True)
        return True


class ReuseReadRoundCore(RaftCore):
    def _become_leader(self) -> None:
        super()._become_leader()
        assert self.leader is not None
        self.leader.__class__ = _ReuseReadRoundLeader


class EarlyReadCore(RaftCore):
    """Serves reads before an entry of its term has committed (breaks thesis §6.4 step 1;
    etcd #7331): a new leader's commit index may trail what its predecessor committed."""

    def _become_leader(self) -> None:
        super()._become_leader()
        assert self.leader is not None
        self.leader.term_committed = True


class TwoChangesInFlightCore(RaftCore):
    """Proposes a change while an earlier one is uncommitted (breaks thesis §4.1)."""

    def propose_change(self, change: Change) -> tuple[int, int]:
        if self.leader is None:
            raise ChangeRefused(f"n{self.id} is not the leader")
        if self.log.term(self.commit_index) != self.current_term:
            raise ChangeRefused(f"n{self.id} has not committed an entry of its term")
        return self._append_config(self.membership.apply(change)), self.current_term


class _LearnerCountingElection(Election):
    """Asks learners too and counts their grants toward a majority of the voters."""

    def __init__(self, core: RaftCore, send: Callable[[Message], None], *, pre_vote: bool) -> None:
        super().__init__(core, send, pre_vote=pre_vote)
        self._size = len(self._voters)
        self._voters = core.membership.members
        self._others = tuple(sorted(self._voters - {core.id}))

    def result(self) -> quorum.VoteResult:
        return quorum.vote_result(self.votes, self._size)


class LearnerVotesCore(RaftCore):
    """Counts the votes of learners (breaks thesis §4.2.1: they are no voters)."""

    def _start_election(self, *, pre_vote: bool) -> None:
        super()._start_election(pre_vote=pre_vote)
        if self._election is not None and self.membership.learners:
            votes = self._election.votes
            self._election = _LearnerCountingElection(self, self._send, pre_vote=pre_vote)
            self._election.votes = votes
            self._election.request_votes()


PLANTED: dict[str, type[RaftCore]] = {
    "double-vote": DoubleVoteCore,
    "stale-log-vote": StaleLogVoteCore,
    "keep-suffix": KeepSuffixCore,
    "early-timeout-now": EarlyTimeoutNowCore,
    "propose-in-transfer": ProposeInTransferCore,
    "reuse-read-round": ReuseReadRoundCore,
    "early-read": EarlyReadCore,
    "two-changes-in-flight": TwoChangesInFlightCore,
    "learner-votes": LearnerVotesCore,
}


# ---------------------------------------------------------------- drivers


class EarlyAckNode(RaftNode):
    """Sends every Ready's messages before persisting it, a follower's acknowledgements
    and votes included (breaks thesis §3.8: an entry acknowledged but lost in a crash)."""

    async def _perform(self, ready: Ready) -> None:
        if not ready.send_before_persist:
            ready.send_before_persist = True
        await super()._perform(ready)


class ApplyFirstNode(RaftNode):
    """Applies a Ready's committed entries before persisting it (breaks the Ready contract:
    an entry applied, then lost in a crash, the state machine ahead of the log)."""

    async def _perform(self, ready: Ready) -> None:
        if ready.snapshot is None:
            for entry in ready.committed:
                self.state_machine.apply(entry)
            ready.committed = []
        await super()._perform(ready)


PLANTED_DRIVERS: dict[str, type[RaftNode]] = {
    "early-ack": EarlyAckNode,
    "apply-first": ApplyFirstNode,
}


# ---------------------------------------------------------------- lease keepers


class NoFailoverExtensionKeeper(LeaseKeeper):
    """A new leader gives the leases it inherits only what it guesses is left of their
    TTL, half of it, instead of a full TTL from the start of its term (breaks the
    keeper's rule 1, etcd's rule): a lease renewed just before a failover expires
    before its TTL from that renewal has run out."""

    def reset(self) -> None:
        super().reset()
        if self._now is None:
            return
        now, table = self._now(), self._table()
        for lease_id in self._deadlines:
            lease = table.get(lease_id)
            assert lease is not None
            self._deadlines[lease_id] = now + lease.ttl / 2


PLANTED_KEEPERS: dict[str, type[LeaseKeeper]] = {
    "no-failover-extension": NoFailoverExtensionKeeper,
}
