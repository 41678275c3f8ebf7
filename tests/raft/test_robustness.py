"""Network input never breaks the core: random well-typed messages with random values."""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvraft.raft.core import RaftCore, Role
from kvraft.raft.messages import (
    AppendEntries,
    AppendEntriesReply,
    Entry,
    InstallSnapshot,
    InstallSnapshotReply,
    Message,
    RequestVote,
    RequestVoteReply,
    TimeoutNow,
)
from kvraft.raft.ready import HardState, PersistentState, Snapshot
from kvraft.raft.storage import MemoryStorage

from .harness import log_of, make_config

PEERS = (1, 2, 3)
ACTIONS = ["step"] * 6 + ["tick", "tick", "propose", "ready", "ready", "campaign", "compact"]
KINDS = [
    RequestVote,
    RequestVoteReply,
    AppendEntries,
    AppendEntries,
    AppendEntriesReply,
    AppendEntriesReply,
    InstallSnapshot,
    InstallSnapshotReply,
    TimeoutNow,
]


class Draw:
    """Random message fields, mostly near the core's state so that the interesting
    branches run (a term that matches, an index inside the log), sometimes junk."""

    def __init__(self, data: st.DataObject, core: RaftCore) -> None:
        self.data, self.core = data, core

    def pick(self, *choices: object) -> object:
        return self.data.draw(st.sampled_from(choices))

    def int_near(self, value: int, spread: int = 2) -> int:
        if self.data.draw(st.integers(0, 9)) == 0:
            return self.data.draw(st.integers(-3, 40))  # junk
        return value + self.data.draw(st.integers(-spread, spread))

    def term(self) -> int:
        current = self.core.current_term
        return int(self.pick(current, current, current + 1, current - 1, self.int_near(current)))  # type: ignore[call-overload]

    def index(self) -> int:
        return self.int_near(self.data.draw(st.integers(0, self.core.last_index + 1)))

    def message(self) -> Message:
        data, core = self.data, self.core
        kind = data.draw(st.sampled_from(KINDS))
        src = int(self.pick(2, 3, 2, 3, 1, 7))  # type: ignore[call-overload]
        dst = int(self.pick(1, 1, 1, 1, 1, 2))  # type: ignore[call-overload]
        term = self.term()
        flag = data.draw(st.booleans())
        if core.role in (Role.PRE_CANDIDATE, Role.CANDIDATE) and flag:
            # What a candidate hopes for: a grant of the term it asked for.
            pre_vote = core.role is Role.PRE_CANDIDATE
            wanted = core.current_term + int(pre_vote)
            return RequestVoteReply(
                src=src,
                dst=dst,
                term=wanted,
                vote_granted=data.draw(st.booleans()),
                pre_vote=pre_vote,
            )
        if kind is RequestVote:
            return RequestVote(
                src=src,
                dst=dst,
                term=term,
                last_log_index=self.int_near(core.last_index),
                last_log_term=self.int_near(core.last_term),
                pre_vote=flag,
            )
        if kind is RequestVoteReply:
            return RequestVoteReply(
                src=src, dst=dst, term=term, vote_granted=data.draw(st.booleans()), pre_vote=flag
            )
        if kind is AppendEntries:
            prev = self.index()
            known = core.term(prev)
            prev_term = known if known is not None and flag else max(0, self.int_near(0, 3))
            count = data.draw(st.integers(0, 4))
            low = max(prev_term, 1)
            entry_terms = sorted(data.draw(st.integers(low, max(term, low))) for _ in range(count))
            entries = tuple(
                Entry(term=t, index=self.int_near(prev + 1 + k, 0), command=data.draw(commands))
                for k, t in enumerate(entry_terms)
            )
            return AppendEntries(
                src=src,
                dst=dst,
                term=term,
                prev_log_index=prev,
                prev_log_term=prev_term,
                entries=entries,
                leader_commit=self.index(),
            )
        if kind is AppendEntriesReply:
            return AppendEntriesReply(
                src=src,
                dst=dst,
                term=term,
                success=flag,
                match_index=self.index(),
                conflict_index=self.index(),
                conflict_term=self.int_near(core.last_term),
            )
        if kind is InstallSnapshot:
            chunk = data.draw(st.binary(max_size=4))
            return InstallSnapshot(
                src=src,
                dst=dst,
                term=term,
                last_included_index=self.index() + data.draw(st.integers(0, 3)),
                last_included_term=self.int_near(core.last_term, 1),
                offset=int(self.pick(0, 0, 0, 2, 4, -1)),  # type: ignore[call-overload]
                data=chunk,
                done=data.draw(st.booleans()),
                # Right for a one-chunk snapshot, or junk.
                checksum=int(self.pick(zlib.crc32(chunk), 0, -1)),  # type: ignore[call-overload]
            )
        if kind is InstallSnapshotReply:
            return InstallSnapshotReply(
                src=src,
                dst=dst,
                term=term,
                last_included_index=self.index(),
                next_offset=self.int_near(2),
                done=data.draw(st.booleans()),
            )
        return TimeoutNow(src=src, dst=dst, term=term)


commands = st.one_of(st.none(), st.binary(max_size=3))


@st.composite
def persisted_states(draw: st.DrawFn) -> PersistentState:
    log_terms = sorted(draw(st.lists(st.integers(1, 3), max_size=8)))
    entries = log_of(log_terms)
    snapshot = None
    if entries and draw(st.booleans()):
        at = draw(st.integers(1, len(entries)))
        snapshot = Snapshot(at, entries[at - 1].term, b"snap")
        entries = entries[at:]
    term = max(log_terms, default=0) + draw(st.integers(0, 2))
    commit = draw(st.integers(snapshot.index if snapshot else 0, len(log_terms)))
    voted_for = draw(st.sampled_from([None, 1, 2, 3]))
    return PersistentState(HardState(term, voted_for, commit), snapshot, entries)


@dataclass
class Observer:
    """Invariants of one core over a whole run, checked after every action."""

    core: RaftCore
    storage: MemoryStorage = field(default_factory=MemoryStorage)
    term: int = 0
    vote: int | None = None
    applied: int = 0
    committed: dict[int, Entry] = field(default_factory=dict)

    def perform_ready(self) -> None:
        core = self.core
        has_ready = core.has_ready()
        ready = core.ready()
        # has_ready() is the query of exactly this: whether the Ready holds anything.
        assert has_ready == bool(
            ready.hard_state is not None
            or ready.entries
            or ready.snapshot is not None
            or ready.messages
            or ready.committed
        )
        self.storage.save(ready.hard_state, ready.entries, ready.snapshot)
        stored = self.storage.load()
        stored_last = (stored.snapshot.index if stored.snapshot else 0) + len(stored.entries)
        assert stored.hard_state.commit_index <= stored_last
        if ready.snapshot is not None:
            self.applied = ready.snapshot.index
        for entry in ready.committed:
            assert entry.index == self.applied + 1
            self.applied = entry.index
            self.committed[entry.index] = entry
            offset = stored.snapshot.index if stored.snapshot else 0
            if entry.index > offset:
                assert stored.entries[entry.index - offset - 1] == entry
        core.advance(ready)

    def check(self) -> None:
        core = self.core
        assert core.log.snapshot_index <= core.applying_index <= core.commit_index
        assert core.commit_index <= core.last_index
        assert core.first_index == core.log.snapshot_index + 1
        if core.snapshot is not None:
            assert core.snapshot.index == core.log.snapshot_index
        previous_term = core.term(core.log.snapshot_index)
        assert previous_term is not None
        for index in range(core.first_index, core.last_index + 1):
            entry = core.entry(index)
            assert entry is not None and entry.index == index
            assert previous_term <= entry.term <= core.current_term
            previous_term = entry.term
        for index, entry in self.committed.items():
            assert core.entry(index) in (None, entry)  # committed entries never change
        assert (core.role is Role.LEADER) == (core.leader is not None)
        if core.role is Role.LEADER:
            assert core.leader_id == core.id
        assert core.voted_for in (None, *PEERS)
        # Terms never go back; within a term, a vote once cast never changes.
        assert core.current_term >= self.term
        if core.current_term == self.term and self.vote is not None:
            assert core.voted_for == self.vote
        self.term, self.vote = core.current_term, core.voted_for


@pytest.fixture
def quiet_raft_log(caplog: pytest.LogCaptureFixture) -> None:
    """Hundreds of runs of operator log lines only slow the test down."""
    caplog.set_level(logging.WARNING, logger="kvraft.raft")


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(persisted_states(), st.data())
def test_random_messages_never_raise_and_keep_invariants(
    quiet_raft_log: None, state: PersistentState, data: st.DataObject
) -> None:
    """Stale, duplicated, misaddressed and nonsensical messages are ignored safely.

    Reference: Raft §5.1 (servers ignore what does not make sense);
    docs/architecture.md, limits against hostile input
    """
    config = make_config(1, PEERS, election_timeout_ticks=3, heartbeat_interval_ticks=1)
    core = RaftCore(config, state)
    observer = Observer(core, term=core.current_term, vote=core.voted_for)
    observer.storage.save(state.hard_state, state.entries, state.snapshot)
    observer.applied = state.snapshot.index if state.snapshot else 0
    draw = Draw(data, core)

    for _ in range(data.draw(st.integers(0, 80))):
        match data.draw(st.sampled_from(ACTIONS)):
            case "tick":
                core.tick()
            case "propose":
                core.propose(b"p")
            case "ready":
                observer.perform_ready()
            case "campaign":
                core.campaign()
            case "compact":
                observer.perform_ready()
                index = core.applying_index
                term = core.term(index)
                if index > core.log.snapshot_index and term is not None:
                    core.compact(Snapshot(index, term, b"compacted"))
                    observer.storage.compact(Snapshot(index, term, b"compacted"))
            case _:
                core.step(draw.message())
        observer.check()
    observer.perform_ready()
    observer.check()
