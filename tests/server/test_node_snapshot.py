"""RaftNode's snapshots: copied on the loop, encoded in a worker thread, skipped when overtaken."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from kvraft.raft.config import RaftConfig
from kvraft.raft.messages import Entry
from kvraft.raft.ready import Snapshot
from kvraft.raft.storage import MemoryStorage
from kvraft.server.kvstore import KVStore
from kvraft.server.node import NodeTiming, RaftNode, StateMachine


class Recorder(StateMachine):
    """Counts applied commands; its snapshot is the count, encoded by ``gate``-held encoders."""

    def __init__(self) -> None:
        self.applied = 0
        self.gate = threading.Event()
        self.gate.set()
        self.encoder_threads: list[str] = []

    def apply(self, entry: Entry) -> None:
        if entry.command:
            self.applied += 1

    def restore(self, snapshot: Snapshot) -> None:
        self.applied = int(snapshot.data or b"0")

    def capture_snapshot(self) -> Callable[[], bytes]:
        count = self.applied  # the consistent copy

        def encode() -> bytes:
            self.encoder_threads.append(threading.current_thread().name)
            assert self.gate.wait(10)
            return str(count).encode()

        return encode


def make_node(sm: Recorder, storage: MemoryStorage, threshold: int) -> RaftNode:
    config = RaftConfig(node_id=0, peers=(0,))
    return RaftNode(
        config,
        storage,
        {0: "127.0.0.1:1"},
        sm,
        timing=NodeTiming(tick_interval_s=0.002),
        snapshot_threshold_bytes=threshold,
    )


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def become_leader_and_submit(node: RaftNode, commands: int) -> None:
    await wait_for(lambda: node.get_state()[1])
    for n in range(commands):
        assert node.submit(b"c%d" % n) is not None
        await asyncio.sleep(0)
    await wait_for(lambda: node.core.applied_index >= node.core.last_index)


def test_snapshot_is_encoded_off_the_event_loop_and_compacts_storage_and_core() -> None:
    """Past the threshold the node snapshots at its applied index: the encoder runs in the
    snapshot thread, and storage and core both drop the log up to the snapshot."""

    async def main() -> None:
        sm, storage = Recorder(), MemoryStorage()
        node = make_node(sm, storage, threshold=2000)
        await node.start()
        try:
            await become_leader_and_submit(node, 100)
            await wait_for(lambda: node.core.snapshot is not None and not node._snapshotting)
            snapshot = node.core.snapshot
            assert snapshot is not None
            assert storage.snapshot == snapshot
            assert node.core.first_index == snapshot.index + 1
            # The encoded state is the state at the snapshot's index (one no-op first).
            assert int(snapshot.data) == snapshot.index - 1
            assert sm.encoder_threads and all("-snap" in t for t in sm.encoder_threads)
        finally:
            await node.stop()

    asyncio.run(main())


def test_snapshot_overtaken_while_encoding_is_skipped() -> None:
    """A snapshot taken at index i is dropped, not stored, if the log was compacted past i
    while it was being encoded (as after a leader's InstallSnapshot)."""

    async def main() -> None:
        sm, storage = Recorder(), MemoryStorage()
        node = make_node(sm, storage, threshold=2000)
        sm.gate.clear()
        await node.start()
        try:
            await become_leader_and_submit(node, 100)
            await wait_for(lambda: node._snapshotting)
            # Meanwhile the log is replaced by a newer snapshot.
            newer = Snapshot(
                node.core.applied_index, node.core.term(node.core.applied_index) or 0, b"x"
            )
            storage.compact(newer)
            node.core.compact(newer)
            sm.gate.set()
            await wait_for(lambda: not node._snapshotting)
            assert node.core.snapshot == newer
            assert storage.snapshot == newer
        finally:
            node.snapshot_threshold_bytes = None
            await node.stop()

    asyncio.run(main())


def test_kvstore_copy_is_independent_and_encodes_the_same_bytes() -> None:
    """A copy sees none of the original's later puts, and encodes as the original did."""
    store = KVStore()
    for n in range(20_000):
        store.put(f"k{(n * 7919) % 20_000}", "v", 0)
    copy = store.copy()
    before = store.snapshot()
    store.put("k1", "changed", 1)
    store.put("new", "v", 0)
    assert copy.snapshot() == before
    assert b"".join(copy.snapshot_chunks(items_per_chunk=7)) == before
    assert copy.data_bytes() == KVStore.restore(before).data_bytes()
    assert KVStore.restore(before) == copy
