"""Log compaction and InstallSnapshot: chunking, installing, stale chunks."""

from __future__ import annotations

import zlib

import pytest

from kvraft.raft.core import RaftCore, Role
from kvraft.raft.leader import STALLED_HEARTBEATS
from kvraft.raft.membership import frame_snapshot
from kvraft.raft.messages import (
    AppendEntriesReply,
    InstallSnapshot,
    InstallSnapshotReply,
    Message,
    RequestVoteReply,
)
from kvraft.raft.progress import ProgressState
from kvraft.raft.ready import Snapshot

from .harness import Cluster, drain, log_of, make_core, sent

DATA = bytes(range(50))
DATA_CRC = zlib.crc32(DATA)  # every chunk carries the whole snapshot's checksum


def chunks_of(msgs: list[Message]) -> list[InstallSnapshot]:
    return [m for m in msgs if isinstance(m, InstallSnapshot)]


def snapshot_leader(chunk_bytes: int = 16) -> RaftCore:
    """Node 1, leader of term 2, whose log starts after a snapshot at index 20 (term 1)."""
    core = make_core(
        1,
        term=1,
        commit=20,
        snapshot=Snapshot(20, 1, DATA),
        entries=log_of([1, 1], start=21),
        pre_vote=False,
        snapshot_chunk_bytes=chunk_bytes,
    )
    core.campaign()
    drain(core)
    core.step(RequestVoteReply(src=3, dst=1, term=2, vote_granted=True, pre_vote=False))
    assert core.role is Role.LEADER
    return core


def test_leader_sends_compacted_prefix_as_snapshot_chunks() -> None:
    """A follower that needs compacted entries gets the snapshot, chunk by chunk.

    Reference: Raft §7, Figure 13 (offset, done)
    """
    leader = snapshot_leader(chunk_bytes=16)
    follower = make_core(2, term=1)
    assert leader.leader is not None
    drain(leader)
    # Its log is empty.
    leader.step(
        AppendEntriesReply(
            src=2, dst=1, term=2, success=False, match_index=22, conflict_index=1, conflict_term=0
        )
    )
    chunks = []

    for _ in range(10):
        msgs = chunks_of(sent(leader))
        if not msgs:
            break
        chunks.extend(msgs)
        for msg in msgs:
            follower.step(msg)
        for reply in sent(follower):
            leader.step(reply)

    # The chunks carry the data framed with the configuration at index 20.
    config = leader.config_at(20)
    size = len(frame_snapshot(config, DATA))
    assert [(c.offset, len(c.data), c.done) for c in chunks] == [
        (offset, min(16, size - offset), offset + 16 >= size) for offset in range(0, size, 16)
    ]
    assert follower.snapshot == Snapshot(20, 1, DATA, config)
    assert follower.membership == config
    assert leader.leader.progress[2].match_index == 20
    assert leader.leader.progress[2].state is ProgressState.PROBE


def test_follower_installs_snapshot_and_keeps_a_matching_suffix() -> None:
    """A log that holds the snapshot's last entry keeps the entries after it.

    Reference: Raft §7 (Figure 13, receiver rule 6)
    """
    follower = make_core(2, term=1, entries=log_of([1] * 30))

    follower.step(
        InstallSnapshot(
            src=1,
            dst=2,
            term=1,
            last_included_index=20,
            last_included_term=1,
            offset=0,
            data=DATA,
            done=True,
            checksum=DATA_CRC,
        )
    )
    [ready] = drain(follower)

    assert ready.snapshot == Snapshot(20, 1, DATA)
    assert [e.index for e in ready.entries] == list(range(21, 31))
    assert (follower.first_index, follower.last_index) == (21, 30)
    assert (follower.commit_index, follower.applying_index) == (20, 20)
    assert ready.committed == []
    [reply] = ready.messages
    assert isinstance(reply, InstallSnapshotReply) and reply.done


def test_follower_installing_a_snapshot_discards_a_conflicting_log() -> None:
    """A log whose entry at the snapshot's index has another term is dropped entirely.

    Reference: Raft §7 (Figure 13, receiver rule 7)
    """
    follower = make_core(2, term=2, entries=log_of([1] * 10 + [2] * 20))

    follower.step(
        InstallSnapshot(
            src=1,
            dst=2,
            term=3,
            last_included_index=20,
            last_included_term=3,
            offset=0,
            data=DATA,
            done=True,
            checksum=DATA_CRC,
        )
    )
    [ready] = drain(follower)

    assert ready.snapshot == Snapshot(20, 3, DATA)
    assert ready.entries == []
    assert (follower.first_index, follower.last_index, follower.last_term) == (21, 20, 3)


def test_out_of_order_and_stale_chunks_are_refused_with_the_wanted_offset() -> None:
    """A chunk that does not continue the assembled bytes changes nothing.

    Reference: Raft §7 (Figure 13: offset)
    """
    follower = make_core(2, term=1)

    # Starts past offset 0.
    follower.step(
        InstallSnapshot(
            src=1,
            dst=2,
            term=1,
            last_included_index=20,
            last_included_term=1,
            offset=16,
            data=DATA[16:32],
            done=False,
            checksum=DATA_CRC,
        )
    )
    follower.step(
        InstallSnapshot(
            src=1,
            dst=2,
            term=1,
            last_included_index=20,
            last_included_term=1,
            offset=0,
            data=DATA[:16],
            done=False,
            checksum=DATA_CRC,
        )
    )
    # A duplicate: restarts.
    follower.step(
        InstallSnapshot(
            src=1,
            dst=2,
            term=1,
            last_included_index=20,
            last_included_term=1,
            offset=0,
            data=DATA[:16],
            done=False,
            checksum=DATA_CRC,
        )
    )
    # Leaves a gap.
    follower.step(
        InstallSnapshot(
            src=1,
            dst=2,
            term=1,
            last_included_index=20,
            last_included_term=1,
            offset=32,
            data=DATA[32:],
            done=True,
            checksum=DATA_CRC,
        )
    )
    # Of another snapshot.
    follower.step(
        InstallSnapshot(
            src=1,
            dst=2,
            term=1,
            last_included_index=19,
            last_included_term=1,
            offset=16,
            data=DATA[16:],
            done=True,
            checksum=DATA_CRC,
        )
    )
    replies = [m for m in sent(follower) if isinstance(m, InstallSnapshotReply)]

    assert [(r.next_offset, r.done) for r in replies] == [
        (0, False),
        (16, False),
        (16, False),
        (16, False),
        (0, False),
    ]
    assert follower.snapshot is None and follower.commit_index == 0


def test_snapshot_of_committed_entries_is_acknowledged_without_installing() -> None:
    """A snapshot that covers nothing beyond our commit index is already held.

    Reference: Raft §7 (Figure 13, receiver rule 6)
    """
    follower = make_core(2, term=1, commit=25, entries=log_of([1] * 30))

    follower.step(
        InstallSnapshot(
            src=1,
            dst=2,
            term=1,
            last_included_index=20,
            last_included_term=1,
            offset=0,
            data=DATA,
            done=True,
            checksum=DATA_CRC,
        )
    )
    [ready] = drain(follower)

    assert ready.snapshot is None and follower.first_index == 1
    [reply] = ready.messages
    assert isinstance(reply, InstallSnapshotReply) and reply.done


def test_compact_drops_the_prefix_and_keeps_the_snapshot() -> None:
    """After compact(), entries up to the snapshot are gone; the snapshot stands for them.

    Reference: Raft §7
    """
    cluster = Cluster.of(3)
    cluster.elect(1)
    cluster.propose(1, *[b"c%d" % i for i in range(5)])
    cluster.stabilize()
    leader = cluster.cores[1]
    term = leader.term(4)
    assert term is not None

    leader.compact(Snapshot(4, term, b"state"))

    assert leader.first_index == 5 and leader.entry(4) is None and leader.entry(5) is not None
    assert leader.snapshot == Snapshot(4, term, b"state")
    assert leader.status()["snapshot_index"] == 4


def test_compact_past_applied_is_refused() -> None:
    """Only what was handed out to apply may be compacted.

    Reference: Raft §7
    """
    core = make_core(1, term=1, entries=log_of([1] * 5))

    with pytest.raises(ValueError, match="past applied"):
        core.compact(Snapshot(3, 1, b""))


def test_lagging_follower_catches_up_through_a_snapshot() -> None:
    """A follower cut off while the leader compacted catches up by snapshot, then entries.

    Reference: Raft §7
    """
    cluster = Cluster.of(3, snapshot_chunk_bytes=3)
    cluster.elect(1)
    cluster.isolated.add(3)
    cluster.propose(1, *[b"c%d" % i for i in range(10)])
    cluster.stabilize()
    leader = cluster.cores[1]
    cluster.process_all()
    leader.compact(Snapshot(8, 1, b"snapshot at 8"))

    cluster.isolated.clear()
    cluster.tick(4)
    cluster.propose(1, b"after")
    cluster.stabilize()
    cluster.tick(2)

    lagging = cluster.cores[3]
    assert lagging.snapshot == Snapshot(8, 1, b"snapshot at 8")
    assert [e.command for e in cluster.applied[3]] == [b"c7", b"c8", b"c9", b"after"]
    assert lagging.commit_index == leader.commit_index == 12


def test_snapshot_chunks_are_paced_by_acknowledgements_not_by_heartbeats() -> None:
    """While a chunk is in flight, a heartbeat does not send it again; once it has gone
    unanswered for STALLED_HEARTBEATS heartbeats (lost), one does. A round trip longer
    than a heartbeat interval would otherwise send every chunk twice or more.

    Reference: Raft §7 (InstallSnapshot), Figure 13
    """
    leader = snapshot_leader(chunk_bytes=16)
    assert leader.leader is not None
    drain(leader)
    leader.step(
        AppendEntriesReply(
            src=2, dst=1, term=2, success=False, match_index=22, conflict_index=1, conflict_term=0
        )
    )
    first = [c for c in chunks_of(sent(leader)) if c.dst == 2]
    assert [(c.offset, len(c.data)) for c in first] == [(0, 16)]

    def heartbeat() -> list[InstallSnapshot]:
        for _ in range(leader.config.heartbeat_interval_ticks):
            leader.tick()
        return [c for c in chunks_of(sent(leader)) if c.dst == 2]

    resent = [heartbeat() for _ in range(STALLED_HEARTBEATS)]

    # Unanswered for STALLED_HEARTBEATS heartbeats: only the last one retransmits.
    assert all(chunks == [] for chunks in resent[:-1])
    assert [(c.offset, len(c.data)) for c in resent[-1]] == [(0, 16)]
    # An acknowledgement sends the next chunk at once, and restarts the count.
    leader.step(
        InstallSnapshotReply(
            src=2, dst=1, term=2, last_included_index=20, next_offset=16, done=False
        )
    )
    assert [(c.offset, len(c.data)) for c in chunks_of(sent(leader))] == [(16, 16)]
    assert STALLED_HEARTBEATS > 1
    assert heartbeat() == []
