"""Log replication: commit rules, repair, fast backtracking, batching, pipelining."""

from __future__ import annotations

import copy

import pytest

from kvraft.raft.core import RaftCore, Role
from kvraft.raft.messages import (
    AppendEntries,
    AppendEntriesReply,
    Entry,
    Message,
    RequestVote,
    RequestVoteReply,
)
from kvraft.raft.progress import ProgressState
from kvraft.raft.ready import HardState, PersistentState, Ready, Snapshot

from .harness import Cluster, drain, log_of, make_config, make_core, sent


def appends(msgs: list[Message], dst: int | None = None) -> list[AppendEntries]:
    return [m for m in msgs if isinstance(m, AppendEntries) and dst in (None, m.dst)]


def make_leader(entries: tuple[object, ...] = (), term: int = 1, **overrides: object) -> RaftCore:
    """Node 1 of (1, 2, 3), leader of ``term + 1`` by node 3's vote, its Readies drained."""
    core = make_core(1, term=term, entries=entries, pre_vote=False, **overrides)  # type: ignore[arg-type]
    core.campaign()
    drain(core)
    core.step(RequestVoteReply(src=3, dst=1, term=term + 1, vote_granted=True, pre_vote=False))
    assert core.role is Role.LEADER
    return core


def test_leader_commits_only_current_term_entries_by_counting() -> None:
    """Figure 8: an old-term entry on a majority is not committed until one of this term is.

    Reference: Raft §5.4.2, Figure 8
    """
    leader = make_leader(log_of([1, 2]), term=3)  # no-op at index 3, term 4
    drain(leader)
    assert leader.commit_index == 0

    leader.step(
        AppendEntriesReply(
            src=2, dst=1, term=4, success=True, match_index=2, conflict_index=0, conflict_term=0
        )
    )
    assert leader.commit_index == 0  # index 2 is on a majority, but of term 2

    leader.step(
        AppendEntriesReply(
            src=2, dst=1, term=4, success=True, match_index=3, conflict_index=0, conflict_term=0
        )
    )
    assert leader.commit_index == 3  # the no-op commits, and index 2 with it


def test_leader_counts_itself_only_for_persisted_entries() -> None:
    """A follower's ack makes a majority with the leader only once the leader persisted.

    Reference: Raft thesis §10.2.1; docs/architecture.md, Raft: core and driver
    """
    leader = make_leader()
    drain(leader)
    leader.step(
        AppendEntriesReply(
            src=2, dst=1, term=2, success=True, match_index=1, conflict_index=0, conflict_term=0
        )
    )
    assert leader.commit_index == 1
    index, _ = leader.propose(b"x") or (0, 0)

    leader.step(
        AppendEntriesReply(
            src=2, dst=1, term=2, success=True, match_index=index, conflict_index=0, conflict_term=0
        )
    )
    assert leader.commit_index == 1  # the leader's own copy is not on disk yet
    ready = leader.ready()
    assert [e.index for e in ready.entries] == [index]
    leader.advance(ready)

    assert leader.commit_index == index


def test_follower_truncates_a_conflicting_suffix() -> None:
    """Entries that conflict with the leader's, and all after them, are replaced.

    Reference: Raft §5.3, Figure 2 (AppendEntries rule 3)
    """
    follower = make_core(2, term=2, entries=log_of([1, 1, 2, 2]))
    new = log_of([3, 3], start=3)

    follower.step(
        AppendEntries(
            src=1, dst=2, term=3, prev_log_index=2, prev_log_term=1, entries=new, leader_commit=0
        )
    )
    [ready] = drain(follower)

    assert [(e.index, e.term) for e in ready.entries] == [(3, 3), (4, 3)]
    assert follower.last_index == 4 and follower.term(4) == 3
    [reply] = ready.messages
    assert isinstance(reply, AppendEntriesReply) and (reply.success, reply.match_index) == (True, 4)


def test_follower_commit_never_exceeds_its_last_new_entry() -> None:
    """commitIndex = min(leaderCommit, index of last new entry), and so does its hard state.

    Reference: Raft Figure 2 (AppendEntries rule 5)
    """
    follower = make_core(2, term=1)

    follower.step(
        AppendEntries(
            src=1,
            dst=2,
            term=1,
            prev_log_index=0,
            prev_log_term=0,
            entries=log_of([1, 1]),
            leader_commit=50,
        )
    )
    [ready] = drain(follower)

    assert follower.commit_index == 2
    assert ready.hard_state == HardState(1, None, 2)
    assert [e.index for e in ready.committed] == [1, 2]


def test_append_entries_contradicting_committed_entries_change_nothing() -> None:
    """A message that disagrees with a committed entry cannot come from a leader.

    Found by the random-message test: skipping the committed prefix without
    checking it let an old-term entry follow a newer one.
    Reference: Raft §5.4 (Leader Completeness), Figure 2 (AppendEntries rule 2)
    """
    follower = make_core(2, term=2, commit=3, entries=log_of([1, 1, 2]))

    follower.step(
        AppendEntries(
            src=1,
            dst=2,
            term=2,
            prev_log_index=1,
            prev_log_term=1,
            entries=log_of([1, 1, 1], start=2),
            leader_commit=0,
        )
    )
    [reply] = sent(follower)

    assert [follower.term(i) for i in (1, 2, 3, 4)] == [1, 1, 2, None]
    assert isinstance(reply, AppendEntriesReply) and not reply.success


def test_duplicate_append_entries_do_not_truncate() -> None:
    """A delayed copy of an older AppendEntries leaves the newer entries in place.

    Reference: Raft §5.3
    """
    follower = make_core(2, term=1)
    follower.step(
        AppendEntries(
            src=1,
            dst=2,
            term=1,
            prev_log_index=0,
            prev_log_term=0,
            entries=log_of([1, 1, 1, 1]),
            leader_commit=0,
        )
    )
    drain(follower)

    follower.step(
        AppendEntries(
            src=1,
            dst=2,
            term=1,
            prev_log_index=0,
            prev_log_term=0,
            entries=log_of([1, 1]),
            leader_commit=0,
        )
    )
    [reply] = sent(follower)

    assert follower.last_index == 4
    assert isinstance(reply, AppendEntriesReply) and reply.match_index == 2


def replicate(leader: RaftCore, follower: RaftCore) -> tuple[int, int]:
    """Round trips (and refusals among them) until ``follower`` matches ``leader``'s log."""
    assert leader.leader is not None
    progress = leader.leader.progress[follower.id]
    round_trips = refusals = 0
    while progress.match_index < leader.last_index:
        round_trips += 1
        assert round_trips < 1000
        for msg in appends(sent(leader), follower.id):
            follower.step(msg)
        for reply in sent(follower):
            assert isinstance(reply, AppendEntriesReply)
            refusals += not reply.success
            leader.step(reply)
        if not leader.has_ready():
            leader.tick()  # heartbeat: probe again if something was lost
    return round_trips, refusals


def test_fast_backtracking_repairs_a_300_entry_divergence_in_few_round_trips() -> None:
    """The follower names its conflicting term; the leader skips the whole run at once.

    Naive backtracking (one index per refusal) would need 300 round trips.
    Reference: Raft §5.3 (the optimization it sketches), 6.824 guide
    """
    leader = make_leader(log_of([1] * 10 + [3] * 300), term=3)
    follower = make_core(2, term=3, entries=log_of([1] * 10 + [2] * 300))

    round_trips, refusals = replicate(leader, follower)

    assert refusals == 1
    assert round_trips <= 3
    assert [follower.term(i) for i in (10, 11, 310, 311)] == [1, 3, 3, 4]


def test_fast_backtracking_skips_a_300_entry_gap_in_one_refusal() -> None:
    """A follower whose log is too short says where it ends.

    Reference: Raft §5.3, 6.824 guide
    """
    leader = make_leader(log_of([1] * 310), term=1)
    follower = make_core(2, term=1, entries=log_of([1] * 10))

    round_trips, refusals = replicate(leader, follower)

    assert (round_trips, refusals) == (2, 1)


def test_fast_backtracking_to_the_last_shared_term() -> None:
    """The follower holds a long run of a term the leader has, but shorter there.

    Leader: 10 x term 1, 50 x term 2, 250 x term 4. Follower: 10 x term 1,
    300 x term 2. The leader jumps to the end of its own term-2 run.
    Reference: Raft §5.3, 6.824 guide
    """
    leader = make_leader(log_of([1] * 10 + [2] * 50 + [4] * 250), term=4)
    follower = make_core(2, term=4, entries=log_of([1] * 10 + [2] * 300))

    round_trips, refusals = replicate(leader, follower)

    assert refusals == 1 and round_trips <= 3
    assert [follower.term(i) for i in (60, 61, 311)] == [2, 4, 5]


def test_proposals_between_readies_are_batched() -> None:
    """Proposals made between two Readies go out in one Ready and one message per follower.

    Reference: Raft thesis §10.2.1 (batching)
    """
    cluster = Cluster.of(3)
    cluster.elect(1)
    leader = cluster.cores[1]

    cluster.propose(1, *[b"c%d" % i for i in range(5)])
    ready = leader.ready()

    assert len(ready.entries) == 5
    assert sorted((m.dst, len(m.entries)) for m in appends(ready.messages)) == [(2, 5), (3, 5)]


def test_batching_bounds_entries_per_message() -> None:
    """No AppendEntries carries more than max_entries_per_message entries.

    Reference: Raft thesis §10.2.1
    """
    cluster = Cluster.of(3, max_entries_per_message=3)
    cluster.elect(1)

    cluster.propose(1, *[b"c%d" % i for i in range(7)])
    msgs = appends(cluster.cores[1].ready().messages, 2)

    assert [len(m.entries) for m in msgs] == [3, 3, 1]
    assert [m.prev_log_index for m in msgs] == [1, 4, 7]


def test_batching_bounds_bytes_per_message() -> None:
    """Entries are packed up to max_bytes_per_message; an oversized one travels alone.

    Reference: Raft thesis §10.2.1
    """
    cluster = Cluster.of(3, max_bytes_per_message=10)
    cluster.elect(1)

    cluster.propose(1, b"aaaa", b"bbbb", b"cccc", b"x" * 30, b"dd")
    msgs = appends(cluster.cores[1].ready().messages, 2)

    assert [[e.command for e in m.entries] for m in msgs] == [
        [b"aaaa", b"bbbb"],
        [b"cccc"],
        [b"x" * 30],
        [b"dd"],
    ]


def test_pipelining_keeps_several_append_entries_in_flight() -> None:
    """In replicate state the leader sends ahead, up to max_inflight_messages unanswered.

    Reference: Raft thesis §10.2.2 (pipelining)
    """
    cluster = Cluster.of(3, max_entries_per_message=1, max_inflight_messages=4)
    cluster.elect(1)
    leader = cluster.cores[1]

    cluster.propose(1, *[b"c%d" % i for i in range(6)])
    in_flight = appends(leader.ready().messages, 2)
    assert [m.entries[0].index for m in in_flight] == [2, 3, 4, 5]

    cluster.cores[2].step(in_flight[0])
    [ack] = [m for m in cluster.cores[2].ready().messages if m.dst == 1]
    leader.step(ack)

    assert [m.entries[0].index for m in appends(leader.ready().messages, 2)] == [6]


def test_probe_state_sends_one_append_at_a_time() -> None:
    """After a refusal the leader probes: one AppendEntries, then it waits.

    Reference: Raft §5.3, etcd raft's progress states
    """
    leader = make_leader(log_of([1] * 5), term=1)
    assert leader.leader is not None
    drain(leader)
    # The refusal of the first probe (prev_log_index 5): the follower ends at index 2.
    leader.step(
        AppendEntriesReply(
            src=2, dst=1, term=2, success=False, match_index=5, conflict_index=3, conflict_term=0
        )
    )

    first = appends(sent(leader), 2)
    leader.propose(b"more")
    second = appends(sent(leader), 2)

    assert leader.leader.progress[2].state is ProgressState.PROBE
    assert [m.prev_log_index for m in first] == [2]
    assert second == []


def test_lost_append_is_repaired_after_a_heartbeat() -> None:
    """A follower refuses the heartbeat after a gap; the leader probes and resends.

    Reference: Raft §5.3 (the leader retries AppendEntries indefinitely)
    """
    cluster = Cluster.of(3)
    cluster.elect(1)
    cluster.propose(1, b"lost")
    cluster.isolated.add(3)
    cluster.stabilize()  # node 3 misses the entry and the new commit index
    cluster.isolated.clear()
    assert cluster.cores[3].last_index == 1

    cluster.tick(2)  # one heartbeat interval

    assert [e.command for e in cluster.applied[3]] == [None, b"lost"]


def test_restart_applies_what_the_hard_state_says_is_committed() -> None:
    """A restarted node hands out entries up to its persisted commit index at once.

    Reference: Raft thesis §3.8 (commit index as a persisted hint)
    """
    state = PersistentState(HardState(2, 1, 3), None, log_of([1, 1, 2, 2, 2]))
    core = RaftCore(make_config(1), state)

    [ready] = drain(core)

    assert [e.index for e in ready.committed] == [1, 2, 3]
    assert ready.hard_state is None and ready.entries == []


def test_stalled_pipeline_is_resent_after_two_silent_heartbeat_intervals() -> None:
    """Entries in flight with no acknowledgement over two heartbeat intervals are resent.

    The first heartbeat after the send sets the baseline; the third resends.

    Reference: Raft §5.3 (the leader retries AppendEntries indefinitely), thesis §10.2.2
    """
    cluster = Cluster.of(3, max_inflight_messages=8)
    cluster.elect(1)
    leader = cluster.cores[1]
    cluster.propose(1, b"lost")
    sent(leader)  # the AppendEntries are lost
    resent = []

    for _ in range(6):  # three heartbeats
        leader.tick()
        resent.extend(m for m in appends(sent(leader), 2) if m.entries)

    assert [[e.command for e in m.entries] for m in resent] == [[b"lost"]]


def test_a_leaders_messages_may_leave_before_its_own_write() -> None:
    """A leader's Ready says its messages may be sent before persisting its entries; a
    leader whose own write is lost still never counts those entries toward commit.

    Reference: Raft thesis §10.2.1
    """
    leader = make_leader()
    drain(leader)
    for follower in (2, 3):  # both hold the no-op: replicating, not probing
        leader.step(
            AppendEntriesReply(
                src=follower,
                dst=1,
                term=2,
                success=True,
                match_index=1,
                conflict_index=0,
                conflict_term=0,
            )
        )
    drain(leader)
    index, _ = leader.propose(b"x") or (0, 0)
    ready = leader.ready()
    assert ready.send_before_persist
    assert [e.index for e in ready.entries] == [index]
    assert [m.entries[-1].index for m in appends(ready.messages) if m.entries] == [index, index]
    # One follower acknowledges before the leader's write completes: no majority yet.
    leader.step(
        AppendEntriesReply(
            src=2, dst=1, term=2, success=True, match_index=index, conflict_index=0, conflict_term=0
        )
    )
    assert leader.commit_index < index
    leader.advance(ready)
    assert leader.commit_index == index


def test_votes_and_acknowledgements_wait_for_the_write() -> None:
    """A candidate's vote requests, a voter's grant and a follower's acknowledgement each
    promise something about the disk: their Readies never allow sending first.

    Reference: Raft thesis §3.8, §10.2.1
    """
    candidate = make_core(1, pre_vote=False)
    candidate.campaign()
    ready = candidate.ready()
    assert ready.hard_state is not None and not ready.send_before_persist

    voter = make_core(2, pre_vote=False)
    voter.step(RequestVote(src=1, dst=2, term=1, last_log_index=0, last_log_term=0, pre_vote=False))
    ready = voter.ready()
    assert any(isinstance(m, RequestVoteReply) and m.vote_granted for m in ready.messages)
    assert not ready.send_before_persist

    follower = make_core(2, term=1)
    follower.step(
        AppendEntries(
            src=1,
            dst=2,
            term=1,
            prev_log_index=0,
            prev_log_term=0,
            entries=(Entry(term=1, index=1, command=b"x"),),
            leader_commit=0,
        )
    )
    ready = follower.ready()
    assert ready.entries and ready.messages and not ready.send_before_persist


def test_a_leader_that_steps_down_in_the_batch_sends_after_its_write() -> None:
    """A leader that learned of a higher term in this batch must persist the new term before
    anything it answers leaves.

    Reference: Raft thesis §3.8
    """
    leader = make_leader()
    drain(leader)
    # n3 leads term 5
    leader.step(
        AppendEntries(
            src=3, dst=1, term=5, prev_log_index=0, prev_log_term=0, entries=(), leader_commit=0
        )
    )
    assert leader.role is Role.FOLLOWER
    ready = leader.ready()
    assert ready.hard_state is not None and ready.hard_state.current_term == 5
    assert not ready.send_before_persist


def test_a_new_commit_index_alone_is_applied_without_a_write() -> None:
    """Entries committed since the last Ready are applied without persisting the commit
    index first; the hint goes to disk with the next write.

    Reference: Raft thesis §3.8 (only term, vote and log must be durable first)
    """
    leader = make_leader()
    drain(leader)
    for follower in (2, 3):
        leader.step(
            AppendEntriesReply(
                src=follower,
                dst=1,
                term=2,
                success=True,
                match_index=1,
                conflict_index=0,
                conflict_term=0,
            )
        )
    drain(leader)
    index, _ = leader.propose(b"x") or (0, 0)
    leader.advance(leader.ready())
    leader.step(
        AppendEntriesReply(
            src=2, dst=1, term=2, success=True, match_index=index, conflict_index=0, conflict_term=0
        )
    )
    assert leader.commit_index == index

    ready = leader.ready()
    assert [e.index for e in ready.committed] == [index]
    assert ready.hard_state is None and not ready.entries
    # No message of its own: the followers hear of it at the next tick.
    assert not ready.messages
    leader.advance(ready)
    assert not leader.has_ready()
    leader.tick()
    notices = appends(leader.ready().messages)
    assert {m.dst for m in notices} == {2, 3}
    assert all(m.leader_commit == index and not m.entries for m in notices)

    leader.propose(b"y")
    ready = leader.ready()
    assert ready.hard_state is not None and ready.hard_state.commit_index == index


def test_a_commit_hint_behind_the_snapshot_is_normal_on_restart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The persisted commit index may trail a later snapshot: a restart starts from the
    snapshot's index, quietly; only a hint past the log is worth a warning."""
    core = make_core(1, commit=2, snapshot=Snapshot(5, 1, b"s"), entries=log_of([1], start=6))
    assert core.commit_index == 5 and core.applying_index == 5
    assert not [r for r in caplog.records if r.levelname == "WARNING"]

    core = make_core(1, commit=9, entries=log_of([1, 1]))
    assert core.commit_index == 2
    assert "persisted commit index 9 outside the persisted log" in caplog.text


def five_node_leader_with_an_unacknowledged_entry() -> tuple[RaftCore, int]:
    """Node 1 of five, leading term 1 with every follower replicating; its entry at the
    returned index is on its own disk and sent to all, and none has acknowledged it."""
    leader = make_core(1, (1, 2, 3, 4, 5), pre_vote=False)
    leader.campaign()
    drain(leader)
    for voter in (2, 3):
        leader.step(RequestVoteReply(src=voter, dst=1, term=1, vote_granted=True, pre_vote=False))
    assert leader.role is Role.LEADER
    drain(leader)
    for follower in (2, 3, 4, 5):  # all hold the no-op: replicating
        leader.step(acknowledgement(follower, term=1, match_index=1))
    drain(leader)
    index, _ = leader.propose(b"x") or (0, 0)
    drain(leader)
    return leader, index


def acknowledgement(src: int, *, term: int, match_index: int) -> AppendEntriesReply:
    return AppendEntriesReply(
        src=src,
        dst=1,
        term=term,
        success=True,
        match_index=match_index,
        conflict_index=0,
        conflict_term=0,
    )


def test_has_ready_changes_nothing_a_ready_is_the_same_however_often_it_is_asked() -> None:
    """has_ready() is a query: asking it (once, twice, between inputs or not) leaves the
    core as it was, so the next Ready is the one a driver that never asked would get.

    Here n2's acknowledgement is answered by nothing yet (no commit moves: two of five)
    when has_ready() is asked; n3's then commits the entry, and the Ready is the same.
    Reference: etcd raft's HasReady (a query); Raft thesis §10.2.1
    """
    asked, _ = five_node_leader_with_an_unacknowledged_entry()
    never_asked, index = five_node_leader_with_an_unacknowledged_entry()
    for core in (asked, never_asked):
        core.step(acknowledgement(2, term=1, match_index=index))
    assert asked.leader is not None
    progress_before = copy.deepcopy(asked.leader.progress)
    status_before = asked.status()

    assert not asked.has_ready() and not asked.has_ready()
    assert asked.status() == status_before
    assert asked.leader.progress == progress_before

    for core in (asked, never_asked):
        core.step(acknowledgement(3, term=1, match_index=index))
    assert asked.has_ready() and asked.has_ready()
    ready = asked.ready()

    assert ready == never_asked.ready()
    assert [e.index for e in ready.committed] == [index]
    # The commit sends nothing of its own (followers hear of it at the next tick).
    assert not appends(ready.messages)


def test_has_ready_is_true_exactly_when_the_ready_holds_something() -> None:
    """A leader's queued sends count toward has_ready() only if they would send a message.

    Reference: etcd raft's HasReady
    """
    leader, index = five_node_leader_with_an_unacknowledged_entry()
    # Queues an answer to n2, which would say nothing: n2 has it all and knows the
    # commit index, which two of five do not move.
    leader.step(acknowledgement(2, term=1, match_index=index))
    assert not leader.has_ready()
    assert leader.ready() == Ready(send_before_persist=True)

    leader.propose(b"y")
    assert leader.has_ready()
    ready = leader.ready()
    assert ready.entries and {m.dst for m in appends(ready.messages)} == {2, 3, 4, 5}
