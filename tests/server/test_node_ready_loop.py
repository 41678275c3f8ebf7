"""RaftNode's Ready loop performs the durability order the core asks for: a leader's
AppendEntries leave while its own write is still running (Raft thesis §10.2.1), and a
candidate's vote requests only after its vote for itself is on disk (thesis §3.8)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from kvraft.raft.config import RaftConfig
from kvraft.raft.messages import (
    AppendEntries,
    AppendEntriesReply,
    Entry,
    Message,
    RequestVote,
    RequestVoteReply,
)
from kvraft.raft.ready import HardState, Snapshot
from kvraft.raft.storage import MemoryStorage
from kvraft.server.node import NodeTiming, RaftNode, ReadFailed, StateMachine

from .node_support import RecordingTransport


class NullStateMachine(StateMachine):
    def apply(self, entry: Entry) -> None:
        pass

    def restore(self, snapshot: Snapshot) -> None:
        pass


class HeldStorage(MemoryStorage):
    """MemoryStorage whose saves wait while ``hold`` is set (a slow disk), saying so."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = threading.Event()
        self.release = threading.Event()
        self.held = threading.Event()  # a save is waiting now

    def save(self, *args: object) -> None:
        if self.hold.is_set():
            self.held.set()
            assert self.release.wait(10)
            self.held.clear()
        super().save(*args)  # type: ignore[arg-type]


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.002)


def test_leader_sends_append_entries_while_its_own_write_is_held() -> None:
    """With its write of a new entry held, a leader has already sent the entry to its
    followers, and counts a follower's acknowledgement toward commit only once its own
    write is done. Before that, as a candidate, it sent no vote request until its vote
    for itself was saved.

    Reference: Raft thesis §10.2.1, §3.8
    """

    async def main() -> None:
        storage = HeldStorage()
        # No timers of its own get in the way: long elections, no check-quorum.
        config = RaftConfig(
            node_id=0, peers=(0, 1, 2), pre_vote=False, check_quorum=False,
            election_timeout_ticks=1000,
        )  # fmt: skip
        transport = RecordingTransport()
        node = RaftNode(
            config, storage, transport, NullStateMachine(), timing=NodeTiming(tick_interval_s=0.01)
        )
        sent = transport.sent
        await node.start()
        try:
            # A candidate's vote requests wait for its vote for itself to be on disk.
            storage.hold.set()
            node.campaign()
            await wait_for(storage.held.is_set)
            # Sent before the save, they would be here already.
            assert not any(isinstance(m, RequestVote) for m in sent)
            storage.hold.clear()
            storage.release.set()
            await wait_for(lambda: any(isinstance(m, RequestVote) for m in sent))
            assert storage.hard_state == HardState(1, 0, 0)

            node.receive(
                1, RequestVoteReply(src=1, dst=0, term=1, vote_granted=True, pre_vote=False)
            )
            await wait_for(lambda: node.get_state() == (1, True))
            # n1 holds the no-op
            node.receive(
                1,
                AppendEntriesReply(
                    src=1,
                    dst=0,
                    term=1,
                    success=True,
                    match_index=1,
                    conflict_index=0,
                    conflict_term=0,
                ),
            )
            await wait_for(lambda: node.core.commit_index == 1)

            # The leader's write of a new entry is held; its AppendEntries go out anyway.
            storage.release.clear()
            storage.hold.set()
            index, _ = node.submit(b"x") or (0, 0)
            await wait_for(storage.held.is_set)
            await wait_for(lambda: _carries(sent, index, dst=1))
            assert storage.held.is_set() and len(storage.entries) == 1
            # A follower's acknowledgement alone commits nothing while the write is held
            # (node.receive steps it at once).
            node.receive(
                1,
                AppendEntriesReply(
                    src=1,
                    dst=0,
                    term=1,
                    success=True,
                    match_index=index,
                    conflict_index=0,
                    conflict_term=0,
                ),
            )
            assert node.core.commit_index == 1
            storage.hold.clear()
            storage.release.set()
            await wait_for(lambda: node.core.commit_index == index)
        finally:
            storage.hold.clear()
            storage.release.set()
            await node.stop()

    asyncio.run(main())


def _carries(sent: list[Message], index: int, dst: int) -> bool:
    return any(
        isinstance(m, AppendEntries) and m.dst == dst and any(e.index == index for e in m.entries)
        for m in sent
    )


def test_leader_heartbeats_leave_on_time_while_its_write_is_held() -> None:
    """A leader whose save takes longer than an election timeout keeps sending its
    heartbeats meanwhile (they depend on nothing unpersisted), so a slow disk does not
    depose a healthy leader; what waits for the save is only what depends on it.

    Reference: Raft thesis §10.2.1, §3.8
    """

    async def main() -> None:
        storage = HeldStorage()
        config = RaftConfig(
            node_id=0, peers=(0, 1, 2), pre_vote=False, check_quorum=False,
            election_timeout_ticks=10, heartbeat_interval_ticks=2,
        )  # fmt: skip
        transport = RecordingTransport()
        node = RaftNode(
            config, storage, transport, NullStateMachine(), timing=NodeTiming(tick_interval_s=0.01)
        )
        await node.start()
        try:
            node.campaign()
            await wait_for(lambda: any(isinstance(m, RequestVote) for m in transport.sent))
            node.receive(
                1,
                RequestVoteReply(src=1, dst=0, term=1, vote_granted=True, pre_vote=False),
            )
            await wait_for(lambda: node.get_state() == (1, True))
            # The leader's next write (of a new entry) is held for as long as it takes.
            storage.hold.set()
            assert node.submit(b"x") is not None
            await wait_for(storage.held.is_set)
            before = len(transport.sent)
            # Three election timeouts' worth of heartbeats (2 ticks each) to n2, all
            # while the save is held: without them n2 would have campaigned long ago.
            await wait_for(
                lambda: (
                    sum(
                        isinstance(m, AppendEntries) and m.dst == 2 for m in transport.sent[before:]
                    )
                    >= 15
                )
            )
            assert storage.held.is_set()
            assert node.get_state() == (1, True)
        finally:
            storage.hold.clear()
            storage.release.set()
            await node.stop()

    asyncio.run(main())


def test_a_read_index_resolves_after_its_round_and_fails_when_the_leader_steps_down() -> None:
    """RaftNode.read_index: None on a follower; on a leader a future that resolves to the
    commit index once a follower echoes the round, after the Ready's entries were applied;
    a read pending when the node steps down fails with ReadFailed.

    Reference: Raft thesis §6.4; the Ready order of kvraft.raft.ready
    """

    async def main() -> None:
        applied: list[int] = []

        class Recording(NullStateMachine):
            def apply(self, entry: Entry) -> None:
                applied.append(entry.index)

        config = RaftConfig(
            node_id=0, peers=(0, 1, 2), pre_vote=False, check_quorum=False,
            election_timeout_ticks=1000,
        )  # fmt: skip
        transport = RecordingTransport()
        node = RaftNode(
            config, MemoryStorage(), transport, Recording(), timing=NodeTiming(tick_interval_s=0.01)
        )
        await node.start()
        try:
            assert node.read_index() is None  # a follower refuses
            node.campaign()
            await wait_for(lambda: any(isinstance(m, RequestVote) for m in transport.sent))
            node.receive(
                1, RequestVoteReply(src=1, dst=0, term=1, vote_granted=True, pre_vote=False)
            )
            await wait_for(lambda: node.get_state() == (1, True))

            def ack(read_round: int) -> None:
                node.receive(
                    1,
                    AppendEntriesReply(
                        src=1, dst=0, term=1, success=True, match_index=1,
                        conflict_index=0, conflict_term=0, read_round=read_round,
                    ),
                )  # fmt: skip

            future = node.read_index()
            assert future is not None and node.pending_reads == 1
            ack(0)  # commits the no-op; the round starts only now (own-term rule)
            await wait_for(lambda: node.core.read_rounds_drawn == 1)
            assert not future.done()
            ack(1)
            assert await asyncio.wait_for(future, 5) == 1
            assert applied == [1] and node.pending_reads == 0

            pending = node.read_index()
            assert pending is not None
            # A vote request of a later term deposes it before any round is confirmed.
            node.receive(
                2,
                RequestVote(
                    src=2, dst=0, term=5, last_log_index=9, last_log_term=4, pre_vote=False
                ),
            )
            with pytest.raises(ReadFailed):
                await asyncio.wait_for(pending, 5)
        finally:
            await node.stop()

    asyncio.run(main())
