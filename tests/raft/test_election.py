"""Leader election: votes, terms, pre-vote, leases, check-quorum."""

from __future__ import annotations

import logging
import random

import pytest

from kvraft.raft.core import Role
from kvraft.raft.messages import (
    AppendEntries,
    AppendEntriesReply,
    RequestVote,
    RequestVoteReply,
    TimeoutNow,
)

from .harness import Cluster, drain, log_of, make_core, sent


def vote_replies(core_msgs: list[object]) -> list[tuple[int, bool]]:
    return [(m.dst, m.vote_granted) for m in core_msgs if isinstance(m, RequestVoteReply)]


def test_follower_grants_one_vote_per_term() -> None:
    """Two candidates of the same term ask; only the first gets the vote.

    Reference: Raft §5.2
    """
    core = make_core(1, term=1)

    core.step(RequestVote(src=2, dst=1, term=2, last_log_index=0, last_log_term=0, pre_vote=False))
    core.step(RequestVote(src=3, dst=1, term=2, last_log_index=0, last_log_term=0, pre_vote=False))

    assert vote_replies(sent(core)) == [(2, True), (3, False)]
    assert (core.current_term, core.voted_for) == (2, 2)


def test_vote_is_granted_again_to_the_same_candidate() -> None:
    """A candidate that retries (its reply was lost) gets the same answer.

    Reference: Raft §5.2
    """
    core = make_core(1, term=1)

    core.step(RequestVote(src=2, dst=1, term=2, last_log_index=0, last_log_term=0, pre_vote=False))
    core.step(RequestVote(src=2, dst=1, term=2, last_log_index=0, last_log_term=0, pre_vote=False))

    assert vote_replies(sent(core)) == [(2, True), (2, True)]


def test_vote_is_persisted_in_the_ready_that_sends_the_grant() -> None:
    """The grant leaves only after votedFor is on disk: both are in one Ready.

    Reference: Raft §5.2, thesis §3.8
    """
    core = make_core(1, term=1)

    core.step(RequestVote(src=2, dst=1, term=2, last_log_index=0, last_log_term=0, pre_vote=False))
    ready = core.ready()

    assert ready.hard_state is not None
    assert (ready.hard_state.current_term, ready.hard_state.voted_for) == (2, 2)
    assert vote_replies(ready.messages) == [(2, True)]


@pytest.mark.parametrize(
    ("last_log_term", "last_log_index", "granted"),
    [
        (1, 10, False),  # longer, but an older last term
        (2, 2, False),  # same last term, shorter
        (2, 3, True),  # identical
        (2, 4, True),  # same last term, longer
        (3, 1, True),  # later last term, however short
    ],
)
def test_vote_only_for_a_log_at_least_as_up_to_date(
    last_log_term: int, last_log_index: int, granted: bool
) -> None:
    """The voter's log ends at index 3, term 2; it compares last terms, then lengths.

    Reference: Raft §5.4.1
    """
    core = make_core(1, term=2, entries=log_of([1, 1, 2]))

    core.step(
        RequestVote(
            src=2,
            dst=1,
            term=3,
            last_log_index=last_log_index,
            last_log_term=last_log_term,
            pre_vote=False,
        )
    )

    assert vote_replies(sent(core)) == [(2, granted)]


def test_stale_term_vote_request_is_refused_with_the_current_term() -> None:
    """A candidate of an older term learns the newer one.

    Reference: Raft §5.1
    """
    core = make_core(1, term=5)

    core.step(RequestVote(src=2, dst=1, term=4, last_log_index=0, last_log_term=0, pre_vote=False))

    [reply] = sent(core)
    assert isinstance(reply, RequestVoteReply)
    assert (reply.term, reply.vote_granted) == (5, False)


def test_new_leader_appends_a_no_op_of_its_term() -> None:
    """The first entry of a new leader's term is a no-op, committed like any entry.

    Reference: Raft §8, thesis §6.4
    """
    cluster = Cluster.of(3)

    cluster.elect(1)

    leader = cluster.cores[1]
    noop = leader.entry(leader.last_index)
    assert noop is not None
    assert (noop.term, noop.command) == (leader.current_term, None)
    assert leader.commit_index == noop.index
    # The followers hear of the commit at the leader's next tick (no message of its own).
    assert [cluster.cores[i].commit_index for i in (2, 3)] == [0, 0]
    cluster.tick(1, nodes=[1])
    assert all(core.commit_index == noop.index for core in cluster.cores.values())


def test_election_timeout_is_randomized_within_one_to_two_timeouts() -> None:
    """A follower that hears nothing campaigns after [T, 2T) ticks, spread by its rng.

    Reference: Raft §5.2
    """
    waits = set()
    for seed in range(40):
        core = make_core(1, pre_vote=False, rng=random.Random(seed))
        ticks = 0
        while core.role is Role.FOLLOWER:
            core.tick()
            ticks += 1
        waits.add(ticks)

    assert min(waits) >= 10 and max(waits) < 20
    assert len(waits) > 3


def test_pre_vote_does_not_bump_the_term() -> None:
    """A node that cannot reach anyone keeps pre-voting at the same term.

    Reference: Raft thesis §9.6
    """
    core = make_core(1, term=3)

    for _ in range(200):
        core.tick()
    requests = [m for m in sent(core) if isinstance(m, RequestVote)]

    assert core.current_term == 3
    assert core.role is Role.PRE_CANDIDATE
    assert requests and all(m.pre_vote and m.term == 4 for m in requests)


def test_pre_vote_win_starts_one_real_election() -> None:
    """A pre-candidate granted a majority of pre-votes bumps its term once and campaigns.

    Reference: Raft thesis §9.6
    """
    core = make_core(1, term=3)
    core.campaign()
    drain(core)

    core.step(RequestVoteReply(src=2, dst=1, term=4, vote_granted=True, pre_vote=True))
    requests = [m for m in sent(core) if isinstance(m, RequestVote)]

    assert (core.role, core.current_term, core.voted_for) == (Role.CANDIDATE, 4, 1)
    assert {(m.dst, m.term, m.pre_vote) for m in requests} == {(2, 4, False), (3, 4, False)}


def test_pre_vote_is_refused_to_a_stale_log() -> None:
    """Pre-vote applies the same up-to-date check as a vote, without changing the term.

    Reference: Raft thesis §9.6
    """
    core = make_core(1, term=2, entries=log_of([1, 2]))

    core.step(RequestVote(src=2, dst=1, term=3, last_log_index=5, last_log_term=1, pre_vote=True))

    assert vote_replies(sent(core)) == [(2, False)]
    assert (core.current_term, core.voted_for) == (2, None)


def test_follower_in_lease_ignores_a_higher_term_vote_request() -> None:
    """A follower that heard from its leader within the election timeout ignores candidates.

    Reference: Raft thesis §4.2.3 (disruptive servers), §6.2
    """
    cluster = Cluster.of(3)
    cluster.elect(1)
    follower = cluster.cores[2]

    follower.step(
        RequestVote(src=3, dst=2, term=9, last_log_index=100, last_log_term=9, pre_vote=False)
    )

    assert (follower.current_term, follower.leader_id) == (1, 1)
    assert not [m for m in sent(follower) if isinstance(m, RequestVoteReply)]


def test_rejoining_partitioned_node_does_not_depose_a_healthy_leader() -> None:
    """A node cut off for many election timeouts rejoins as a follower of the same leader.

    Reference: Raft thesis §9.6
    """
    cluster = Cluster.of(3)
    cluster.elect(1)
    cluster.isolated.add(3)
    cluster.tick(100)

    cluster.isolated.clear()
    cluster.tick(30)

    assert cluster.leaders() == [1]
    assert all(core.current_term == 1 for core in cluster.cores.values())
    assert cluster.cores[3].leader_id == 1


def test_check_quorum_leader_steps_down_when_cut_off() -> None:
    """A leader that hears from no majority for a whole check-quorum period steps down.

    The period is twice the election timeout (longer than the followers'
    lease, so heavy loss does not depose a healthy leader). It checks at the
    end of each period, so it takes at most two.
    Reference: Raft thesis §6.2
    """
    cluster = Cluster.of(3)
    cluster.elect(1)
    cluster.isolated.add(1)
    period = cluster.cores[1].config.check_quorum_timeout_ticks
    assert period == 2 * cluster.cores[1].config.election_timeout_ticks

    cluster.tick(period, nodes=[1])
    assert cluster.cores[1].role is Role.LEADER  # heard from both in this period
    cluster.tick(period, nodes=[1])

    assert cluster.cores[1].role is Role.FOLLOWER
    assert cluster.cores[1].leader_id is None


def test_leader_with_quorum_stays_leader() -> None:
    """Check-quorum keeps a leader whose followers answer.

    Reference: Raft thesis §6.2
    """
    cluster = Cluster.of(3)
    cluster.elect(1)
    cluster.isolated.add(3)

    cluster.tick(100)

    assert cluster.leaders() == [1]


def test_leader_steps_down_on_a_reply_of_a_later_term() -> None:
    """Any message of a later term turns a leader into a follower of that term.

    Reference: Raft §5.1
    """
    cluster = Cluster.of(3)
    cluster.elect(1)
    leader = cluster.cores[1]

    leader.step(
        AppendEntriesReply(
            src=2, dst=1, term=7, success=False, match_index=0, conflict_index=0, conflict_term=0
        )
    )

    assert (leader.role, leader.current_term, leader.voted_for) == (Role.FOLLOWER, 7, None)


def test_deposed_leader_learns_the_term_from_a_stale_append_reply() -> None:
    """A follower refuses AppendEntries of an older term and names its own.

    Reference: Raft §5.1, Figure 2 (AppendEntries rule 1)
    """
    core = make_core(2, term=5)

    core.step(
        AppendEntries(
            src=1, dst=2, term=4, prev_log_index=0, prev_log_term=0, entries=(), leader_commit=0
        )
    )

    [reply] = sent(core)
    assert isinstance(reply, AppendEntriesReply)
    assert (reply.term, reply.success) == (5, False)


def test_candidate_that_a_majority_refuses_loses_and_follows() -> None:
    """Refusals from a majority end the election at once.

    Reference: Raft §5.2
    """
    core = make_core(1, term=1, pre_vote=False)
    core.campaign()
    drain(core)

    core.step(RequestVoteReply(src=2, dst=1, term=2, vote_granted=False, pre_vote=False))
    core.step(RequestVoteReply(src=3, dst=1, term=2, vote_granted=False, pre_vote=False))

    assert (core.role, core.current_term, core.voted_for) == (Role.FOLLOWER, 2, 1)


def test_operator_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    """Elections leave one operator-shaped line per event.

    Reference: operator log lines: node, term and index, one line per event
    """
    cluster = Cluster.of(3, pre_vote=False)
    caplog.set_level(logging.INFO, logger="kvraft.raft")

    cluster.elect(1)

    lines = [r.getMessage() for r in caplog.records if r.name == "kvraft.raft"]
    assert lines == [
        "n1 [term 1] starting election at index 0",
        "n1 [term 1] became leader at index 1",
        "n2 [term 1] became follower of n1",
        "n3 [term 1] became follower of n1",
    ]


def test_timeout_now_from_its_leader_makes_a_follower_campaign_at_once() -> None:
    """The receiving half of leadership transfer: no waiting for the election timeout, and
    no pre-vote (the leader asked), so the term goes up at once.

    Reference: Raft thesis §3.10
    """
    cluster = Cluster.of(3)  # pre-vote on
    cluster.elect(1)
    follower = cluster.cores[2]

    follower.step(TimeoutNow(src=1, dst=2, term=1))

    assert (follower.role, follower.current_term, follower.voted_for) == (Role.CANDIDATE, 2, 2)
    requests = [m for m in sent(follower) if isinstance(m, RequestVote)]
    assert {m.dst for m in requests} == {1, 3} and not any(m.pre_vote for m in requests)


def test_timeout_now_from_anyone_but_its_leader_is_ignored() -> None:
    """Only the leader a follower follows may ask it to campaign: another node's request
    would let it depose a healthy leader.

    Reference: Raft thesis §3.10
    """
    cluster = Cluster.of(3)
    cluster.elect(1)
    follower = cluster.cores[2]

    follower.step(TimeoutNow(src=3, dst=2, term=1))
    follower.step(TimeoutNow(src=1, dst=2, term=0))  # a stale term

    assert (follower.role, follower.current_term, follower.leader_id) == (Role.FOLLOWER, 1, 1)
    assert sent(follower) == []
