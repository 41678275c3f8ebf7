"""Terms, indexes and offsets are bounded by MAX_RAFT_INT (2^62) on the wire and in a node.

Reference: issue 11 item 3 (every input bounded, every bound tested at its edge)
"""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from kvraft.raft.core import Role
from kvraft.raft.messages import (
    MAX_RAFT_INT,
    AppendEntries,
    AppendEntriesReply,
    Entry,
    InstallSnapshot,
    InstallSnapshotReply,
    Message,
    RequestVote,
)
from kvraft.raft.ready import Snapshot
from kvraft.raft.validate import well_formed

from .harness import drain, make_core, sent

PEERS = (1, 2, 3)
EDGE = MAX_RAFT_INT


def vote(**fields: int) -> RequestVote:
    msg = RequestVote(src=2, dst=1, term=5, last_log_index=3, last_log_term=2, pre_vote=False)
    return replace(msg, **fields)


def append(**fields: int) -> AppendEntries:
    msg = AppendEntries(
        src=2, dst=1, term=5, prev_log_index=3, prev_log_term=2, entries=(), leader_commit=3
    )
    return replace(msg, **fields)


def append_reply(**fields: int) -> AppendEntriesReply:
    msg = AppendEntriesReply(
        src=2, dst=1, term=5, success=True, match_index=3, conflict_index=0, conflict_term=0
    )
    return replace(msg, **fields)


def chunk(**fields: int) -> InstallSnapshot:
    msg = InstallSnapshot(
        src=2,
        dst=1,
        term=5,
        last_included_index=3,
        last_included_term=2,
        offset=0,
        data=b"x",
        done=True,
        checksum=0,
    )
    return replace(msg, **fields)


def chunk_reply(**fields: int) -> InstallSnapshotReply:
    msg = InstallSnapshotReply(
        src=2, dst=1, term=5, last_included_index=3, next_offset=1, done=False
    )
    return replace(msg, **fields)


CASES: list[tuple[str, Message, Message]] = [
    # (what, a message at the bound, the same one past it)
    ("term", vote(term=EDGE), vote(term=EDGE + 1)),
    ("last_log_index", vote(last_log_index=EDGE), vote(last_log_index=EDGE + 1)),
    ("last_log_term", vote(last_log_term=EDGE), vote(last_log_term=EDGE + 1)),
    ("prev_log_index", append(prev_log_index=EDGE), append(prev_log_index=EDGE + 1)),
    (
        "prev_log_term",
        append(term=EDGE, prev_log_term=EDGE),
        append(term=EDGE + 1, prev_log_term=EDGE + 1),
    ),
    ("leader_commit", append(leader_commit=EDGE), append(leader_commit=EDGE + 1)),
    (
        "entry index",
        append(prev_log_index=EDGE - 1, entries=(Entry(term=5, index=EDGE, command=b"c"),)),  # type: ignore[arg-type]
        append(prev_log_index=EDGE, entries=(Entry(term=5, index=EDGE + 1, command=b"c"),)),  # type: ignore[arg-type]
    ),
    ("match_index", append_reply(match_index=EDGE), append_reply(match_index=EDGE + 1)),
    ("conflict_index", append_reply(conflict_index=EDGE), append_reply(conflict_index=EDGE + 1)),
    ("conflict_term", append_reply(conflict_term=EDGE), append_reply(conflict_term=EDGE + 1)),
    (
        "last_included_index",
        chunk(last_included_index=EDGE),
        chunk(last_included_index=EDGE + 1),
    ),
    ("offset", chunk(offset=EDGE), chunk(offset=EDGE + 1)),
    (
        "reply last_included_index",
        chunk_reply(last_included_index=EDGE),
        chunk_reply(last_included_index=EDGE + 1),
    ),
    ("next_offset", chunk_reply(next_offset=EDGE), chunk_reply(next_offset=EDGE + 1)),
]


@pytest.mark.parametrize(("what", "at_bound", "past_bound"), CASES, ids=[c[0] for c in CASES])
def test_every_term_and_index_is_accepted_at_2_62_and_refused_one_past(
    what: str, at_bound: Message, past_bound: Message
) -> None:
    """Reference: issue 11 item 3; MAX_RAFT_INT keeps every sum inside signed 64 bits."""
    assert well_formed(at_bound, 1), what
    assert not well_formed(past_bound, 1), what


@pytest.mark.parametrize("value", [-1, -(2**63)])
def test_negative_terms_and_indexes_are_refused(value: int) -> None:
    for msg in (vote(term=value), append(leader_commit=value), chunk_reply(next_offset=value)):
        assert not well_formed(msg, 1)


def test_a_node_adopts_a_term_at_the_bound() -> None:
    """A vote request at term 2^62 is a term like another: adopted, persisted, answered."""
    core = make_core(1, PEERS, term=3)
    core.step(vote(term=EDGE, last_log_index=0, last_log_term=0))
    readies = drain(core)

    assert core.current_term == EDGE
    assert readies[0].hard_state is not None and readies[0].hard_state.current_term == EDGE
    assert readies[0].messages[0].term == EDGE


def test_a_term_past_the_bound_changes_nothing() -> None:
    core = make_core(1, PEERS, term=3)
    core.step(vote(term=EDGE + 1, last_log_index=0, last_log_term=0))

    assert core.current_term == 3
    assert not core.has_ready()


@pytest.mark.parametrize("pre_vote", [True, False])
def test_a_node_at_the_bound_refuses_to_campaign_and_writes_nothing(
    pre_vote: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Campaigning at term 2^62 would write 2^62 + 1 (or ask for it): the core refuses,
    logs one ERROR naming the bound, and stays a follower with its state unchanged,
    however often its timer fires (so a restart finds the same valid state)."""
    core = make_core(1, PEERS, term=EDGE, pre_vote=pre_vote)
    drain(core)
    with caplog.at_level(logging.ERROR, logger="kvraft.raft"):
        core.campaign()
        for _ in range(100):
            core.tick()
    messages = sent(core)

    assert core.current_term == EDGE
    assert core.role is Role.FOLLOWER
    assert messages == []
    assert not core.has_ready()
    assert f"refusing to campaign: term {EDGE} or last index 0 is at the bound {EDGE}" in (
        caplog.text
    )


def test_a_node_whose_log_ends_at_the_bound_refuses_to_campaign() -> None:
    """Its no-op as a new leader would be at index 2^62 + 1."""
    snapshot = Snapshot(index=EDGE, term=4, data=b"s")
    core = make_core(1, PEERS, term=5, commit=EDGE, snapshot=snapshot, pre_vote=False)
    drain(core)
    core.campaign()

    assert core.role is Role.FOLLOWER and core.current_term == 5
    assert not core.has_ready()


def test_a_leader_at_the_last_index_below_the_bound_refuses_proposals_past_it() -> None:
    """A leader whose no-op took index 2^62 accepts no proposal (it would be 2^62 + 1)."""
    snapshot = Snapshot(index=EDGE - 1, term=4, data=b"s")
    core = make_core(1, (1,), term=5, commit=EDGE - 1, snapshot=snapshot, pre_vote=False)
    core.campaign()
    drain(core)

    assert core.role is Role.LEADER and core.last_index == EDGE
    assert core.propose(b"one too many") is None
    assert core.last_index == EDGE


def test_a_node_just_below_the_bound_campaigns_to_it() -> None:
    core = make_core(1, PEERS, term=EDGE - 1, pre_vote=False)
    core.campaign()
    readies = drain(core)

    assert core.role is Role.CANDIDATE
    assert core.current_term == EDGE
    assert readies[0].hard_state is not None and readies[0].hard_state.current_term == EDGE
