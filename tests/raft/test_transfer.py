"""Leadership transfer, the leader's half: refusals, catching up, TimeoutNow, abandoning.

Message-level scripts on the in-memory harness: each test decides which
messages are delivered, so "the target has not caught up yet" is a state the
test builds, not a race it hopes for.
"""

from __future__ import annotations

import pytest

from kvraft.raft.core import Role
from kvraft.raft.messages import AppendEntries, AppendEntriesReply, RequestVote, TimeoutNow
from kvraft.raft.transfer import TransferRefused

from .harness import Cluster, make_core, sent

ELECTION_TIMEOUT = 10  # the harness's election_timeout_ticks


def test_transfer_is_refused_to_itself_an_unknown_peer_or_by_a_follower() -> None:
    """Each refusal says why and changes nothing: the leader still takes proposals.

    Reference: Raft thesis §3.10
    """
    cluster = Cluster.of(3)
    cluster.elect(1)
    leader, follower = cluster.cores[1], cluster.cores[2]

    with pytest.raises(TransferRefused, match="to itself"):
        leader.transfer_leadership(1)
    with pytest.raises(TransferRefused, match=r"n7 is not a voter \(voters: n2, n3\)"):
        leader.transfer_leadership(7)
    with pytest.raises(TransferRefused, match="is a peer id, not True"):
        leader.transfer_leadership(True)
    with pytest.raises(TransferRefused, match=r"n2 is not the leader \(n1 is\)"):
        follower.transfer_leadership(3)

    assert leader.transfer_target is None and follower.transfer_target is None
    assert leader.propose(b"x") is not None


def test_a_caught_up_target_is_sent_timeout_now_at_once_and_proposals_stop() -> None:
    """A target whose match index is the leader's last index gets TimeoutNow in the very
    next Ready; from the request on, propose answers None (not leader, nothing appended).

    Reference: Raft thesis §3.10
    """
    cluster = Cluster.of(3)
    cluster.elect(1)
    leader = cluster.cores[1]
    last = leader.last_index

    leader.transfer_leadership(2)

    assert leader.propose(b"refused") is None
    assert leader.last_index == last
    assert [m for m in sent(leader) if isinstance(m, TimeoutNow)] == [
        TimeoutNow(src=1, dst=2, term=1)
    ]


def test_a_lagging_target_is_caught_up_before_timeout_now() -> None:
    """The target lacks entries: the leader sends them, and TimeoutNow only once the
    target's acknowledgement shows it holds the leader's last entry.

    Reference: Raft thesis §3.10
    """
    cluster = Cluster.of(3)
    cluster.elect(1)
    leader = cluster.cores[1]
    cluster.isolated.add(2)
    cluster.propose(1, b"a", b"b", b"c")
    cluster.stabilize()
    cluster.isolated.clear()
    assert leader.leader is not None and leader.leader.progress[2].match_index < leader.last_index

    leader.transfer_leadership(2)
    first = sent(leader)

    assert not any(isinstance(m, TimeoutNow) for m in first)
    assert any(isinstance(m, AppendEntries) and m.dst == 2 for m in first)

    # The target's acknowledgement of an earlier index is not enough...
    leader.step(
        AppendEntriesReply(
            src=2, dst=1, term=1, success=True, match_index=leader.last_index - 1,
            conflict_index=0, conflict_term=0,
        )
    )  # fmt: skip
    assert not any(isinstance(m, TimeoutNow) for m in sent(leader))
    # ...its acknowledgement of the last one is.
    leader.step(
        AppendEntriesReply(
            src=2, dst=1, term=1, success=True, match_index=leader.last_index,
            conflict_index=0, conflict_term=0,
        )
    )  # fmt: skip
    assert [m for m in sent(leader) if isinstance(m, TimeoutNow)] == [
        TimeoutNow(src=1, dst=2, term=1)
    ]


def test_on_the_network_timeout_now_follows_the_targets_catching_up() -> None:
    """Delivered for real, the lagging target's repair (a refusal, a probe, the missing
    entries) comes first; the first TimeoutNow leaves after its acknowledgement of the
    leader's last index.

    Reference: Raft thesis §3.10
    """
    cluster = Cluster.of(3)
    cluster.elect(1)
    leader = cluster.cores[1]
    cluster.isolated.add(2)
    cluster.propose(1, b"a", b"b", b"c")
    cluster.stabilize()
    cluster.isolated.clear()
    last = leader.last_index
    seen: list[object] = []

    leader.transfer_leadership(2)
    for _ in range(20):
        cluster.deliver(lambda msg: seen.append(msg) is None and not isinstance(msg, TimeoutNow))
        if any(isinstance(m, TimeoutNow) for m in seen):
            break

    first = next(i for i, m in enumerate(seen) if isinstance(m, TimeoutNow))
    acks = [
        i
        for i, m in enumerate(seen[:first])
        if isinstance(m, AppendEntriesReply) and m.src == 2 and m.success
        and m.match_index == last
    ]  # fmt: skip
    assert acks, seen[:first]
    assert any(isinstance(m, AppendEntriesReply) and not m.success for m in seen[:first])


@pytest.mark.parametrize("size", [3, 5])
def test_the_target_wins_and_the_old_leader_follows_it_with_nothing_lost(size: int) -> None:
    """With check-quorum on, the target campaigns at the next term and wins; the old leader
    steps down for its vote request (its lease set aside for its own target) and follows.
    Every entry the old leader held is in the new leader's log and committed by it.

    Reference: Raft thesis §3.10, §6.2
    """
    cluster = Cluster.of(size, check_quorum=True)
    cluster.elect(1)
    cluster.propose(1, b"a", b"b")
    cluster.stabilize()
    old = cluster.cores[1]
    held = [old.entry(i) for i in range(1, old.last_index + 1)]

    old.transfer_leadership(2)
    cluster.stabilize()
    # Other voters refuse while in their lease: give them at most one election timeout.
    for _ in range(2 * ELECTION_TIMEOUT):
        if cluster.leaders() == [2]:
            break
        cluster.tick(1)

    new = cluster.cores[2]
    assert cluster.leaders() == [2] and new.current_term == 2
    assert (old.role, old.leader_id) == (Role.FOLLOWER, 2)
    assert old.transfer_target is None
    assert [new.entry(i) for i in range(1, len(held) + 1)] == held
    cluster.tick(1)
    assert old.commit_index == new.commit_index == new.last_index


def test_a_transfer_is_abandoned_after_one_election_timeout() -> None:
    """The target never answers: proposals stay refused for election_timeout_ticks - 1
    ticks, and the tick that completes the election timeout resumes them.

    Reference: Raft thesis §3.10 ("the prior leader aborts the transfer")
    """
    cluster = Cluster.of(3)
    cluster.elect(1)
    leader = cluster.cores[1]
    cluster.isolated.add(2)

    leader.transfer_leadership(2)
    for _ in range(ELECTION_TIMEOUT - 1):
        leader.tick()
    assert leader.transfer_target == 2 and leader.propose(b"still refused") is None

    leader.tick()

    assert leader.role is Role.LEADER and leader.transfer_target is None
    assert leader.propose(b"taken") is not None


def test_asking_again_for_the_same_target_does_not_extend_the_transfer() -> None:
    """A second request for the running transfer's target keeps its clock; another target
    replaces it (and starts its own election timeout).

    Reference: Raft thesis §3.10
    """
    cluster = Cluster.of(3)
    cluster.elect(1)
    leader = cluster.cores[1]
    cluster.isolated.update({2, 3})

    leader.transfer_leadership(2)
    for _ in range(ELECTION_TIMEOUT - 1):
        leader.tick()
    leader.transfer_leadership(2)
    leader.tick()
    assert leader.transfer_target is None

    leader.transfer_leadership(2)
    leader.tick()
    leader.transfer_leadership(3)
    for _ in range(ELECTION_TIMEOUT - 1):
        leader.tick()
    assert leader.transfer_target == 3


def test_only_the_targets_vote_request_breaks_the_leaders_lease() -> None:
    """While transferring to n2, a vote request of n3's at a later term is still ignored
    (check-quorum: a leader does not yield to a disruptive node), and a pre-vote of n2's
    too; n2's real vote request makes the leader step down and grant it.

    Reference: Raft thesis §3.10, §6.2, §9.6
    """
    leader = make_core(1, term=3, check_quorum=True)
    leader.campaign()
    for peer in (2, 3):
        leader.step(_vote_reply(peer, 4, pre_vote=True))
    for peer in (2, 3):
        leader.step(_vote_reply(peer, 4, pre_vote=False))
    assert leader.role is Role.LEADER
    sent(leader)
    leader.transfer_leadership(2)
    sent(leader)
    last = (leader.last_index, leader.last_term)

    leader.step(_vote_request(3, term=5, last=last, pre_vote=False))
    leader.step(_vote_request(2, term=5, last=last, pre_vote=True))
    assert (leader.role, leader.current_term) == (Role.LEADER, 4)

    leader.step(_vote_request(2, term=5, last=last, pre_vote=False))

    assert (leader.role, leader.current_term, leader.voted_for) == (Role.FOLLOWER, 5, 2)
    replies = sent(leader)
    assert [(m.dst, m.vote_granted) for m in replies if hasattr(m, "vote_granted")] == [(2, True)]


def _vote_reply(src: int, term: int, *, pre_vote: bool) -> object:
    from kvraft.raft.messages import RequestVoteReply

    return RequestVoteReply(src=src, dst=1, term=term, vote_granted=True, pre_vote=pre_vote)


def _vote_request(src: int, *, term: int, last: tuple[int, int], pre_vote: bool) -> RequestVote:
    return RequestVote(
        src=src,
        dst=1,
        term=term,
        last_log_index=last[0],
        last_log_term=last[1],
        pre_vote=pre_vote,
    )
