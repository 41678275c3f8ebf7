"""Read-index reads in the core: the own-term commit rule, shared rounds, quorum, step-down."""

from __future__ import annotations

from kvraft.raft.core import Role
from kvraft.raft.messages import MAX_RAFT_INT, AppendEntries, AppendEntriesReply, Message
from kvraft.raft.read_index import ReadState
from kvraft.raft.validate import well_formed

from .harness import Cluster, drain


def elected(size: int = 3, **overrides: object) -> Cluster:
    """A cluster whose node 1 leads, its no-op committed everywhere."""
    cluster = Cluster.of(size, pre_vote=False, **overrides)
    cluster.elect(1)
    cluster.stabilize()
    return cluster


def rounds_sent(msgs: list[Message]) -> set[int]:
    return {m.read_round for m in msgs if isinstance(m, AppendEntries)}


def test_a_read_is_answered_at_the_commit_index_once_a_majority_acknowledges() -> None:
    """The leader records its commit index and hands the read out after one round.

    Reference: Raft thesis §6.4 (steps 2-4)
    """
    cluster = elected()
    cluster.propose(1, b"a", b"b")
    cluster.stabilize()
    leader = cluster.cores[1]
    commit = leader.commit_index

    assert leader.read_index(7)
    cluster.process(1)
    assert cluster.reads[1] == []  # no acknowledgement yet
    cluster.deliver()  # the round's heartbeats reach the followers
    cluster.deliver()  # their replies come back

    assert cluster.reads[1] == [ReadState(request_id=7, index=commit)]
    assert leader.pending_reads == 0


def test_a_new_leader_serves_no_read_before_an_entry_of_its_term_commits() -> None:
    """Until its no-op commits, a new leader's commit index may trail the cluster's.

    Reference: Raft thesis §6.4 (step 1); etcd issue 7331
    """
    cluster = Cluster.of(3, pre_vote=False)
    cluster.cores[1].campaign()
    cluster.deliver()  # vote requests out
    cluster.deliver()  # votes back: leader, the no-op not yet replicated
    leader = cluster.cores[1]
    assert leader.role is Role.LEADER and leader.commit_index == 0

    assert leader.read_index(1)
    cluster.process(1)
    assert rounds_sent(cluster.queue) == {0}  # no round started while waiting
    cluster.stabilize()

    assert leader.commit_index >= 1  # the no-op committed, then the round ran
    assert cluster.reads[1] == [ReadState(request_id=1, index=leader.commit_index)]


def test_reads_asked_between_two_readies_share_one_round() -> None:
    """A burst of reads costs one heartbeat round, not one per read.

    Reference: Raft thesis §6.4 (batching reads)
    """
    cluster = elected()
    leader = cluster.cores[1]
    for request_id in range(1, 6):
        assert leader.read_index(request_id)
    cluster.process(1)

    assert rounds_sent(cluster.queue) == {leader.read_rounds_drawn}
    assert leader.read_rounds_drawn == 1
    cluster.stabilize()
    assert [r.request_id for r in cluster.reads[1]] == [1, 2, 3, 4, 5]


def test_reads_asked_while_a_round_is_in_flight_wait_for_it_and_share_the_next() -> None:
    """One round at a time: later reads start no round of their own until it is confirmed,
    then they all share the next one, whose id is new.

    Reference: Raft thesis §6.4 (batching reads); benchmarks/results/reads.md
    """
    cluster = elected()
    leader = cluster.cores[1]
    assert leader.read_index(1)
    cluster.process(1)
    assert leader.read_rounds_drawn == 1
    for request_id in (2, 3):
        assert leader.read_index(request_id)
    cluster.process(1)
    assert leader.read_rounds_drawn == 1  # round 1 still in flight: no second round yet
    assert rounds_sent(cluster.queue) == {1}

    cluster.deliver()  # round 1's heartbeats reach the followers
    cluster.deliver()  # their replies confirm it; round 2 starts for reads 2 and 3
    assert [r.request_id for r in cluster.reads[1]] == [1]
    assert leader.read_rounds_drawn == 2 and rounds_sent(cluster.queue) == {2}
    cluster.stabilize()
    assert [r.request_id for r in cluster.reads[1]] == [1, 2, 3]
    assert leader.pending_reads == 0


def test_a_round_whose_messages_were_lost_is_confirmed_by_the_next_heartbeats() -> None:
    """The reads queued behind a lost round are not stuck: heartbeats carry its id.

    Reference: Raft thesis §6.4 (step 3)
    """
    cluster = elected()
    leader = cluster.cores[1]
    assert leader.read_index(1)
    cluster.process(1)
    cluster.queue = []  # round 1's messages are lost
    assert leader.read_index(2)
    cluster.process(1)
    assert leader.read_rounds_drawn == 1

    for _ in range(2 * leader.config.heartbeat_interval_ticks):
        cluster.tick(1, nodes=[1])
        cluster.stabilize()
        if leader.pending_reads == 0:
            break
    assert [r.request_id for r in cluster.reads[1]] == [1, 2]
    assert leader.read_rounds_drawn == 2


def test_a_follower_refuses_reads() -> None:
    """Only a leader can vouch for a read index; a follower says no and holds nothing.

    Reference: Raft thesis §6.4
    """
    cluster = elected()

    assert not cluster.cores[2].read_index(1)
    assert cluster.cores[2].pending_reads == 0


def test_a_round_needs_a_majority_of_voters() -> None:
    """In five voters the leader and one acknowledgement are not enough; two more are.

    Reference: Raft thesis §6.4 (step 3)
    """
    cluster = elected(5)
    leader = cluster.cores[1]
    assert leader.read_index(1)
    cluster.process(1)
    cluster.deliver()  # heartbeats to the four followers; their replies queued
    replies = [m for m in cluster.queue if isinstance(m, AppendEntriesReply)]
    assert len(replies) == 4
    cluster.queue = []

    leader.step(replies[0])
    cluster.process(1)
    assert cluster.reads[1] == []
    leader.step(replies[1])
    cluster.process(1)
    assert [r.request_id for r in cluster.reads[1]] == [1]


def test_an_echo_of_an_earlier_round_does_not_confirm_a_later_one() -> None:
    """A late or duplicated reply to round r vouches for nothing asked after r began.

    Reference: Raft thesis §6.4; etcd issue 20418 (a reused id gave stale reads)
    """
    cluster = elected()
    leader = cluster.cores[1]
    assert leader.read_index(1)
    cluster.process(1)
    cluster.deliver()
    old_replies = [m for m in cluster.queue if isinstance(m, AppendEntriesReply)]
    cluster.deliver()
    assert [r.request_id for r in cluster.reads[1]] == [1]

    assert leader.read_index(2)
    cluster.process(1)
    cluster.queue = []  # the new round's heartbeats are lost
    for reply in old_replies:  # while the old answers arrive again
        leader.step(reply)
    cluster.process(1)

    assert [r.request_id for r in cluster.reads[1]] == [1]
    assert leader.pending_reads == 1


def test_an_echo_of_a_round_never_started_is_ignored() -> None:
    """A reply naming a future round id is nonsense: it confirms nothing.

    Reference: read-index rule 4 (kvraft.raft.read_index)
    """
    cluster = elected()
    leader = cluster.cores[1]
    assert leader.read_index(1)
    cluster.process(1)
    cluster.queue = []
    forged = AppendEntriesReply(
        src=2,
        dst=1,
        term=leader.current_term,
        success=True,
        match_index=leader.commit_index,
        conflict_index=0,
        conflict_term=0,
        read_round=leader.read_rounds_drawn + 1,
    )
    leader.step(forged)
    cluster.process(1)

    assert cluster.reads[1] == []
    assert leader.leader is not None
    assert leader.leader.progress[2].read_acked == 0


def test_a_leader_that_steps_down_fails_its_pending_reads() -> None:
    """Reads the deposed leader could not confirm come back as failed, none as answered.

    Reference: Raft thesis §6.4; read-index rule 5
    """
    cluster = elected(check_quorum=False)  # node 2 may campaign at once
    leader = cluster.cores[1]
    assert leader.read_index(1) and leader.read_index(2)
    cluster.process(1)
    cluster.queue = []  # its round never arrives
    cluster.cores[2].campaign()
    cluster.stabilize()

    assert leader.role is Role.FOLLOWER
    assert sorted(cluster.failed_reads[1]) == [1, 2]
    assert cluster.reads[1] == []
    assert leader.pending_reads == 0


def test_round_ids_keep_increasing_across_terms_of_one_core() -> None:
    """Rounds of a later term never reuse an id of an earlier one.

    Reference: read-index rule 4 (kvraft.raft.read_index); etcd issue 20418
    """
    cluster = elected(check_quorum=False)  # elections at once, no leases
    leader = cluster.cores[1]
    for request_id in (1, 2):
        assert leader.read_index(request_id)
        cluster.stabilize()
    first_term_rounds = leader.read_rounds_drawn
    cluster.cores[2].campaign()
    cluster.stabilize()
    cluster.cores[1].campaign()
    cluster.stabilize()
    assert leader.role is Role.LEADER

    assert leader.read_index(3)
    cluster.process(1)
    assert rounds_sent(cluster.queue) == {first_term_rounds + 1}
    cluster.stabilize()
    assert cluster.reads[1][-1].request_id == 3


def test_a_single_node_confirms_reads_at_once() -> None:
    """One voter is its own majority: no round trip, only the own-term commit rule.

    Reference: Raft thesis §6.4
    """
    cluster = Cluster.of(1, pre_vote=False)
    cluster.elect(1)
    core = cluster.cores[1]
    assert core.read_index(4)
    drained = drain(core)

    assert [r for ready in drained for r in ready.reads] == [
        ReadState(request_id=4, index=core.commit_index)
    ]


def test_read_round_is_bounded_on_the_wire() -> None:
    """A read round id at MAX_RAFT_INT is taken; one past it is ignored as malformed.

    Reference: every input has a written bound (kvraft.raft.messages.MAX_RAFT_INT)
    """

    def reply(read_round: int) -> AppendEntriesReply:
        return AppendEntriesReply(
            src=2,
            dst=1,
            term=1,
            success=True,
            match_index=0,
            conflict_index=0,
            conflict_term=0,
            read_round=read_round,
        )

    def append(read_round: int) -> AppendEntries:
        return AppendEntries(
            src=2,
            dst=1,
            term=1,
            prev_log_index=0,
            prev_log_term=0,
            entries=(),
            leader_commit=0,
            read_round=read_round,
        )

    assert well_formed(reply(MAX_RAFT_INT), 1)
    assert not well_formed(reply(MAX_RAFT_INT + 1), 1)
    assert not well_formed(reply(-1), 1)
    assert well_formed(append(MAX_RAFT_INT), 1)
    assert not well_formed(append(MAX_RAFT_INT + 1), 1)
