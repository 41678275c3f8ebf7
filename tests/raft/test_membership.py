"""Membership changes, one server at a time, and learners: paper tests on the in-memory harness.

Each test builds the state it needs by choosing which messages are delivered.
Reference for all: Raft thesis §4.1 (single-server changes), §4.2.1 (catching
up new servers: learners), §4.2.2 (removing the leader), §4.2.3 (disruptive
servers).
"""

from __future__ import annotations

import pytest

from kvraft.raft import membership, quorum
from kvraft.raft.core import Role
from kvraft.raft.membership import (
    MAX_ADDRESS_CHARS,
    MAX_MEMBERS,
    MAX_RETIRED,
    Change,
    ChangeKind,
    ChangeRefused,
    Membership,
)
from kvraft.raft.messages import (
    AppendEntries,
    AppendEntriesReply,
    Entry,
    RequestVote,
    RequestVoteReply,
)
from kvraft.raft.ready import Snapshot
from kvraft.raft.transfer import TransferRefused

from .harness import Cluster, make_core, sent


def add_learner(node: int, address: str = "") -> Change:
    return Change(ChangeKind.ADD_LEARNER, node, address)


def promote(node: int) -> Change:
    return Change(ChangeKind.PROMOTE, node)


def remove(node: int) -> Change:
    return Change(ChangeKind.REMOVE, node)


def elected(size: int = 3) -> Cluster:
    """A cluster whose leader n1 has committed its term's no-op (so it may change members)."""
    cluster = Cluster.of(size)
    cluster.elect(1)
    cluster.tick(2)
    leader = cluster.cores[1]
    assert leader.commit_index == leader.last_index
    return cluster


def change(cluster: Cluster, kind: Change) -> int:
    """Propose at n1 and deliver until committed everywhere reachable; the entry's index."""
    index, _ = cluster.cores[1].propose_change(kind)
    cluster.stabilize()
    cluster.tick(2)
    assert cluster.cores[1].commit_index >= index
    return index


# ------------------------------------------------------------- the encoding


def test_a_configuration_round_trips_through_its_entry_encoding() -> None:
    config = Membership(frozenset({1, 2, 3}), frozenset({7}), {1: "h1:7001", 7: "h7:7007"})

    decoded = membership.decode(membership.encode(config))

    assert decoded.same_as(config)
    assert membership.is_config_command(membership.encode(config))


def test_a_removed_id_is_retired_for_good_and_never_added_again() -> None:
    """An id that voted, back on an empty disk, could vote twice in a term: a
    replacement gets a new id. Retirement survives every later change and the
    entry encoding (so snapshots and restarts keep it)."""
    config = Membership.of_voters([1, 2, 3])
    removed = config.apply(Change(ChangeKind.REMOVE, 3))
    assert removed.retired == {3}
    for kind in (ChangeKind.ADD_LEARNER, ChangeKind.ADD_VOTER):
        with pytest.raises(ChangeRefused, match="n3 was removed from this cluster"):
            removed.apply(Change(kind, 3, "h3:7001"))
    grown = removed.apply(Change(ChangeKind.ADD_LEARNER, 4, "h4:7001"))
    grown = grown.apply(Change(ChangeKind.PROMOTE, 4))
    assert grown.retired == {3}
    decoded = membership.decode(membership.encode(grown))
    assert decoded.same_as(grown) and decoded.retired == {3}
    assert decoded != Membership(grown.voters, grown.learners)  # retirement is part of it


def test_a_configuration_encoded_before_retirement_decodes_with_none_retired() -> None:
    """Entries and data dirs written before ids were retired end after the addresses."""
    config = Membership(frozenset({0, 1, 2}), frozenset({3}), {3: "h3:7001"})
    encoded = membership.encode(config)
    legacy = encoded[:-2]  # the retired count (2 bytes, zero) not written
    decoded = membership.decode(legacy)
    assert decoded.same_as(config) and decoded.retired == frozenset()
    with pytest.raises(ValueError):
        membership.decode(encoded[:-1])  # half a count is still refused


def test_retired_ids_are_bounded_at_max_retired_and_a_removal_past_it_refused() -> None:
    full = Membership(frozenset({0, 1}), retired=frozenset(range(2, 2 + MAX_RETIRED)))
    assert membership.decode(membership.encode(full)).retired == full.retired
    with pytest.raises(ChangeRefused, match=f"{MAX_RETIRED} ids are retired already"):
        full.apply(Change(ChangeKind.REMOVE, 1))
    with pytest.raises(ValueError, match=f"more than {MAX_RETIRED} retired"):
        Membership(frozenset({0}), retired=frozenset(range(1, 2 + MAX_RETIRED)))
    with pytest.raises(ValueError, match="retired ids that are members"):
        Membership(frozenset({0, 1}), retired=frozenset({1}))


def test_a_state_machine_command_is_never_a_configuration() -> None:
    """msgpack never starts a value with 0xC1, the configuration's first byte."""
    import msgpack

    for value in (0, -1, "x", b"x", [1, 2], {"a": 1}, None, 1.5, msgpack.ExtType(21, b"")):
        assert not membership.is_config_command(msgpack.packb(value))
    assert not membership.is_config_command(None)


def test_members_are_bounded_at_max_members_and_refused_one_past() -> None:
    Membership.of_voters(range(MAX_MEMBERS))
    with pytest.raises(ValueError, match=f"more than {MAX_MEMBERS}"):
        Membership.of_voters(range(MAX_MEMBERS + 1))


def test_an_address_is_bounded_and_a_longer_one_refused() -> None:
    Membership.of_voters([1], {1: "a" * MAX_ADDRESS_CHARS})
    with pytest.raises(ValueError, match="at most"):
        Membership.of_voters([1], {1: "a" * (MAX_ADDRESS_CHARS + 1)})


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"junk",
        membership.CONFIG_MAGIC,
        membership.CONFIG_MAGIC + b"\x00\x01\x00",
        membership.encode(Membership.of_voters([1])) + b"\x00",
        membership.CONFIG_MAGIC + (MAX_MEMBERS + 1).to_bytes(2, "big"),
    ],
)
def test_a_damaged_configuration_is_refused_with_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        membership.decode(data)


def test_is_quorum_counts_only_voters() -> None:
    voters = {1, 2, 3}
    assert quorum.is_quorum(voters, {1, 2})
    assert not quorum.is_quorum(voters, {1, 4, 5, 6})  # learners and strangers do not count
    assert quorum.voters_commit_index(voters, {1: 9, 2: 5, 3: 1, 4: 9, 5: 9}) == 5


# ------------------------------------------------------------------ learners


def test_a_learner_gets_the_log_but_is_not_counted_for_commit() -> None:
    """Reference: Raft thesis §4.2.1"""
    cluster = elected()
    cluster.add_node(4)
    change(cluster, add_learner(4))
    leader, learner = cluster.cores[1], cluster.cores[4]
    assert learner.last_index == leader.last_index
    assert learner.membership.learners == {4}

    cluster.isolated = {2, 3}
    index, _ = leader.propose(b"x") or (0, 0)
    cluster.tick(5, nodes=[1, 4])

    assert learner.last_index >= index  # replicated to the learner
    assert leader.commit_index < index  # but leader + learner is no majority of 3 voters


def test_a_learner_never_campaigns() -> None:
    """Reference: Raft thesis §4.2.1"""
    cluster = elected()
    cluster.add_node(4)
    change(cluster, add_learner(4))
    learner = cluster.cores[4]
    cluster.isolated = {1, 2, 3}

    for _ in range(100):
        learner.tick()
        learner.campaign()
    assert learner.role is Role.FOLLOWER
    assert not [m for m in sent(learner) if isinstance(m, RequestVote)]


def test_a_learners_vote_is_not_counted() -> None:
    """Reference: Raft thesis §4.2.1"""
    config = Membership(frozenset({1, 2, 3}), frozenset({4}))
    entry = membership_entry(config, index=1, term=1)
    core = make_core(1, (1, 2, 3), term=1, entries=(entry,), pre_vote=False)
    core.campaign()
    sent(core)

    core.step(RequestVoteReply(src=4, dst=1, term=2, vote_granted=True, pre_vote=False))

    assert core.role is Role.CANDIDATE


def test_transfer_to_a_learner_is_refused() -> None:
    cluster = elected()
    cluster.add_node(4)
    change(cluster, add_learner(4))

    with pytest.raises(TransferRefused, match="n4 is not a voter"):
        cluster.cores[1].transfer_leadership(4)


# ---------------------------------------------------------- the change rules


def test_a_change_waits_for_an_entry_of_the_leaders_term_to_commit() -> None:
    """Reference: Raft thesis §4.1 (the bug fix of 2015)"""
    cluster = Cluster.of(3)
    cluster.cores[1].campaign()
    for _ in range(4):  # pre-vote, vote; the no-op's acknowledgements are lost
        cluster.deliver(keep=lambda msg: not isinstance(msg, AppendEntriesReply))
    leader = cluster.cores[1]
    assert leader.role is Role.LEADER and leader.commit_index < leader.last_index

    with pytest.raises(ChangeRefused, match="not committed an entry of its term"):
        leader.propose_change(add_learner(4))


def test_only_one_change_at_a_time() -> None:
    """Reference: Raft thesis §4.1"""
    cluster = elected()
    leader = cluster.cores[1]
    first, _ = leader.propose_change(add_learner(4))

    with pytest.raises(ChangeRefused, match=f"change at index {first} is not committed"):
        leader.propose_change(add_learner(5))
    assert leader.membership.learners == {4}


def test_refused_changes_say_why_and_change_nothing() -> None:
    cluster = elected()
    leader = cluster.cores[1]
    before = leader.last_index
    for bad, why in [
        (add_learner(2), "already a member"),
        (promote(2), "already a voter"),
        (promote(9), "not a learner"),
        (remove(9), "not a member"),
    ]:
        with pytest.raises(ChangeRefused, match=why):
            leader.propose_change(bad)
    with pytest.raises(ChangeRefused, match="not the leader"):
        cluster.cores[2].propose_change(add_learner(4))
    assert leader.last_index == before


def test_promotion_of_a_lagging_learner_is_refused_then_accepted_once_caught_up() -> None:
    """Reference: Raft thesis §4.2.1 (a new server catches up before it votes)"""
    cluster = Cluster.of(3, max_promotion_lag_entries=5)
    cluster.elect(1)
    cluster.tick(2)
    cluster.add_node(4, max_promotion_lag_entries=5)
    change(cluster, add_learner(4))
    leader = cluster.cores[1]
    cluster.isolated = {4}
    for n in range(20):
        leader.propose(f"w{n}".encode())
    cluster.tick(2)

    with pytest.raises(ChangeRefused, match=r"n4 is 2\d entries behind the leader \(.* 5\)"):
        leader.propose_change(promote(4))

    cluster.isolated = set()
    cluster.tick(4)
    change(cluster, promote(4))
    assert leader.membership.voters == {1, 2, 3, 4}
    assert cluster.cores[4].is_voter


def test_a_configuration_is_in_force_once_appended_and_a_truncation_reverts_it() -> None:
    """A follower uses the latest configuration in its log, committed or not.

    Reference: Raft thesis §4.1
    """
    cluster = elected()
    leader, follower = cluster.cores[1], cluster.cores[2]
    cluster.isolated = {3}
    leader.propose_change(add_learner(4))
    cluster.deliver()  # n2 appends the change; n1 has not heard its answer: uncommitted
    assert leader.commit_index < leader.last_index
    assert follower.membership.learners == {4}
    assert cluster.cores[3].membership.learners == frozenset()


def test_a_truncated_configuration_entry_reverts_to_the_previous_one() -> None:
    """Reference: Raft thesis §4.1 (a log truncation removes a configuration entry)"""
    old = Membership.of_voters([1, 2, 3])
    new = Membership(frozenset({1, 2, 3}), frozenset({4}))
    core = make_core(2, (1, 2, 3), term=2, entries=(membership_entry(new, index=1, term=1),))
    assert core.membership == new

    # The leader of term 2 has a different entry at index 1: the change is truncated.
    core.step(
        AppendEntries(
            src=1,
            dst=2,
            term=2,
            prev_log_index=0,
            prev_log_term=0,
            entries=(Entry(term=2, index=1, command=None),),
            leader_commit=0,
        )
    )

    assert core.last_term == 2
    assert core.membership == old


# ------------------------------------------------------------------- removal


def test_a_removed_leader_leads_until_its_removal_commits_then_steps_down() -> None:
    """It does not count itself toward that commit, and never campaigns again.

    Reference: Raft thesis §4.2.2
    """
    cluster = elected()
    leader = cluster.cores[1]
    cluster.isolated = {3}
    index, _ = leader.propose_change(remove(1))
    cluster.deliver()  # n2 appends; n1 must not commit with itself + n2 (n1 is no voter)
    cluster.process_all()
    assert leader.role is Role.LEADER and leader.commit_index < index

    cluster.isolated = set()
    cluster.stabilize()
    cluster.tick(3)

    assert cluster.cores[1].role is Role.FOLLOWER
    assert not leader.is_voter
    for _ in range(60):
        cluster.tick(1)
    assert len(cluster.leaders()) == 1 and cluster.leaders()[0] in (2, 3)
    assert leader.role is Role.FOLLOWER


def test_a_removed_node_cannot_disturb_the_cluster() -> None:
    """Its vote requests are ignored before their term is looked at.

    Reference: Raft thesis §4.2.3
    """
    cluster = elected()
    cluster.isolated = {3}
    change(cluster, remove(3))  # n3 never hears of its removal
    leader = cluster.cores[1]
    term = leader.current_term
    cluster.isolated = set()
    removed = cluster.cores[3]

    for _ in range(10):
        removed.campaign()
        cluster.stabilize()
        cluster.tick(1)

    assert leader.role is Role.LEADER and leader.current_term == term
    assert cluster.cores[2].current_term == term


def test_three_to_five_to_three() -> None:
    cluster = elected()
    for node in (4, 5):
        cluster.add_node(node)
        change(cluster, add_learner(node))
        change(cluster, promote(node))
    leader = cluster.cores[1]
    assert leader.membership.voters == {1, 2, 3, 4, 5}
    index, _ = leader.propose(b"five") or (0, 0)
    cluster.tick(2)
    assert all(core.commit_index >= index for core in cluster.cores.values())

    for node in (4, 5):
        change(cluster, remove(node))
    assert leader.membership.voters == {1, 2, 3}
    assert cluster.cores[2].membership.voters == {1, 2, 3}


# ----------------------------------------------------------------- snapshots


def test_a_snapshot_carries_the_configuration_at_its_index() -> None:
    """Reference: Raft thesis §4.1 and §5.1 (the configuration survives compaction)"""
    cluster = elected()
    cluster.add_node(4)
    at = change(cluster, add_learner(4))
    leader = cluster.cores[1]
    leader.compact(Snapshot(at, leader.term(at) or 0, b"state"))

    assert leader.snapshot is not None and leader.snapshot.config is not None
    assert leader.snapshot.config.learners == {4}
    restarted = make_core(1, (1, 2, 3), snapshot=leader.snapshot)
    assert restarted.membership.learners == {4}


def test_a_new_member_far_behind_gets_the_configuration_with_the_snapshot() -> None:
    cluster = elected()
    leader = cluster.cores[1]
    for n in range(5):
        leader.propose(f"w{n}".encode())
    cluster.tick(2)
    leader.propose_change(add_learner(4))
    cluster.tick(2)
    at = leader.commit_index
    leader.compact(Snapshot(at, leader.term(at) or 0, b"state"))
    learner = cluster.add_node(4)
    cluster.tick(4)

    assert learner.snapshot is not None and learner.snapshot.index == at
    assert learner.membership.learners == {4}
    assert learner.last_index == leader.last_index


def membership_entry(config: Membership, *, index: int, term: int) -> Entry:
    return Entry(term=term, index=index, command=membership.encode(config))


def test_a_learners_acknowledgement_does_not_confirm_a_read_round() -> None:
    """A read round needs a majority of the voters; learners' echoes of it do not count.

    Reference: Raft thesis §4.2.1 (learners are not counted), §6.4 (read index)
    """
    cluster = elected()
    for learner in (4, 5):
        cluster.add_node(learner)
        change(cluster, add_learner(learner))
    leader = cluster.cores[1]
    cluster.isolated = {2, 3}  # only the two learners can answer the round

    assert leader.read_index(1)
    cluster.tick(3, nodes=[1, 4, 5])
    assert cluster.reads[1] == []  # leader + 2 learners is no majority of 3 voters
    assert leader.leader is not None and leader.leader.progress[4].read_acked > 0

    cluster.isolated = {3}
    cluster.tick(2, nodes=[1, 2])
    assert [r.request_id for r in cluster.reads[1]] == [1]


@pytest.mark.parametrize(("behind", "refused"), [(5, False), (6, True)])
def test_a_learner_is_promoted_at_the_lag_bound_and_refused_one_past_it(
    behind: int, refused: bool
) -> None:
    """``max_promotion_lag_entries`` (5 here): exactly 5 entries behind is promoted, 6 is not.

    Reference: Raft thesis §4.2.1
    """
    cluster = Cluster.of(3, max_promotion_lag_entries=5)
    cluster.elect(1)
    cluster.tick(2)
    cluster.add_node(4, max_promotion_lag_entries=5)
    change(cluster, add_learner(4))
    leader = cluster.cores[1]
    assert leader.leader is not None
    assert leader.leader.progress[4].match_index == leader.last_index
    cluster.isolated = {4}
    for n in range(behind):
        leader.propose(f"w{n}".encode())
    cluster.tick(1, nodes=[1, 2, 3])
    assert leader.last_index - leader.leader.progress[4].match_index == behind

    if refused:
        with pytest.raises(ChangeRefused, match=rf"n4 is {behind} entries behind"):
            leader.propose_change(promote(4))
        assert leader.membership.learners == {4}
    else:
        leader.propose_change(promote(4))
        assert leader.membership.voters == {1, 2, 3, 4}
