"""A received snapshot is verified (checksum, then the state machine's validator) before
the core installs it; a bad one is refused, nothing is handed out to persist, and the
transfer restarts from offset 0.

Reference: Raft §7 (Figure 13); issue 11 item 3 (a bad snapshot never bricks a node)
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import replace

import pytest

from kvraft.raft.core import RaftCore
from kvraft.raft.membership import frame_snapshot
from kvraft.raft.messages import AppendEntriesReply, InstallSnapshot, InstallSnapshotReply
from kvraft.raft.ready import Snapshot

from .harness import drain, make_core, sent
from .test_snapshot import DATA, DATA_CRC, chunks_of, snapshot_leader


def whole_snapshot(data: bytes = DATA, checksum: int = DATA_CRC) -> InstallSnapshot:
    return InstallSnapshot(
        src=1,
        dst=2,
        term=1,
        last_included_index=20,
        last_included_term=1,
        offset=0,
        data=data,
        done=True,
        checksum=checksum,
    )


def refused(follower: RaftCore, msg: InstallSnapshot) -> InstallSnapshotReply:
    """Step ``msg``; check nothing is installed or handed out; the one reply."""
    follower.step(msg)
    readies = drain(follower)
    assert all(r.snapshot is None and not r.entries and not r.committed for r in readies)
    assert follower.snapshot is None and follower.commit_index == 0
    [reply] = [m for r in readies for m in r.messages]
    assert isinstance(reply, InstallSnapshotReply)
    return reply


def test_leader_puts_the_whole_snapshots_crc32_in_every_chunk() -> None:
    leader = snapshot_leader(chunk_bytes=16)
    drain(leader)
    leader.step(
        AppendEntriesReply(
            src=2, dst=1, term=2, success=False, match_index=22, conflict_index=1, conflict_term=0
        )
    )
    [first] = chunks_of(sent(leader))

    # The whole transfer: the data framed with its configuration.
    assert first.checksum == zlib.crc32(frame_snapshot(leader.config_at(20), DATA))
    assert len(first.data) == 16


def test_a_snapshot_with_a_wrong_checksum_is_refused_and_asked_for_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    follower = make_core(2, term=1)
    with caplog.at_level(logging.WARNING, logger="kvraft.raft"):
        reply = refused(follower, whole_snapshot(checksum=DATA_CRC ^ 1))

    assert (reply.next_offset, reply.done) == (0, False)
    assert "refused the snapshot at index 20 from n1: checksum" in caplog.text


def test_a_chunk_damaged_in_transit_is_caught_by_the_checksum() -> None:
    """Two chunks, the second with one bit flipped: the assembled bytes do not match."""
    follower = make_core(2, term=1)
    damaged = bytes([DATA[30] ^ 0x40])
    follower.step(replace(whole_snapshot(data=DATA[:16]), done=False))
    second = replace(whole_snapshot(data=DATA[16:30] + damaged + DATA[31:]), offset=16)

    reply = [m for m in sent(follower) if isinstance(m, InstallSnapshotReply)]
    assert reply[-1].next_offset == 16
    assert (refused(follower, second).next_offset, follower.snapshot) == (0, None)


def test_a_snapshot_the_state_machine_cannot_decode_is_refused() -> None:
    """The checksum is right (the leader's own bytes), but the validator says no."""
    seen: list[bytes] = []

    def validator(data: bytes) -> bool:
        seen.append(data)
        return data.startswith(b"ok")

    follower = make_core(2, term=1, snapshot_validator=validator)
    reply = refused(follower, whole_snapshot())

    assert seen == [DATA]
    assert (reply.next_offset, reply.done) == (0, False)


def test_a_snapshot_that_passes_both_checks_is_installed() -> None:
    data = b"ok" + DATA
    follower = make_core(2, term=1, snapshot_validator=lambda d: d.startswith(b"ok"))
    follower.step(whole_snapshot(data=data, checksum=zlib.crc32(data)))
    [ready] = drain(follower)

    assert ready.snapshot == Snapshot(20, 1, data)


def test_after_a_refusal_the_leader_restarts_the_transfer_from_offset_0() -> None:
    """The follower's next_offset 0 sends the leader back to the first chunk, and a
    clean retransmission is installed."""
    leader = snapshot_leader(chunk_bytes=16)
    follower = make_core(2, term=1)
    drain(leader)
    leader.step(
        AppendEntriesReply(
            src=2, dst=1, term=2, success=False, match_index=22, conflict_index=1, conflict_term=0
        )
    )
    offsets: list[int] = []
    corrupted = False
    for _ in range(20):
        msgs = chunks_of(sent(leader))
        if not msgs:
            leader.tick()
            leader.tick()
            continue
        for msg in msgs:
            offsets.append(msg.offset)
            if msg.offset == 32 and not corrupted:  # damage the third chunk once
                corrupted = True
                msg = replace(msg, data=bytes(16))
            follower.step(msg)
        for reply in sent(follower):
            leader.step(reply)
        if follower.snapshot is not None:
            break

    assert follower.snapshot == Snapshot(20, 1, DATA)
    # Every chunk of the framed transfer, then from offset 0 again.
    size = len(frame_snapshot(leader.config_at(20), DATA))
    whole = list(range(0, size, 16))
    assert offsets[: len(whole) + 1] == [*whole, 0], offsets
