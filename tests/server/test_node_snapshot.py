"""RaftNode's snapshots: copied on the loop, encoded and written in a worker thread while Readys
keep being saved, skipped when overtaken; and a node whose storage fails stops."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import pytest

from kvraft.errors import StorageError
from kvraft.raft.config import RaftConfig
from kvraft.raft.messages import Entry
from kvraft.raft.ready import Snapshot
from kvraft.raft.storage import MemoryStorage
from kvraft.server.kvstore import KVStore
from kvraft.server.node import NodeTiming, RaftNode, StateMachine
from tests.sim.virtual_loop import VirtualTimeLoop

from .node_support import RecordingTransport

T = TypeVar("T")


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


class GatedStorage(MemoryStorage):
    """MemoryStorage whose stage_snapshot waits for ``stage_gate``, recording where it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.stage_gate = threading.Event()
        self.staging = threading.Event()
        self.threads: dict[str, str] = {}

    def stage_snapshot(self, snapshot: Snapshot) -> None:
        self.threads["stage"] = threading.current_thread().name
        self.staging.set()
        assert self.stage_gate.wait(10)

    def compact(self, snapshot: Snapshot) -> None:
        self.threads["compact"] = threading.current_thread().name
        super().compact(snapshot)


class FailingStorage(MemoryStorage):
    """MemoryStorage whose saves fail once ``fail`` is set, as on a full disk."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = False

    def save(self, *args: object) -> None:
        if self.fail:
            raise StorageError("raft.db: save failed: database or disk is full")
        super().save(*args)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running_node(
    sm: Recorder,
    storage: MemoryStorage,
    threshold: int | None,
    *,
    before_stop: Callable[[], None] = lambda: None,
) -> AsyncIterator[RaftNode]:
    """A started single-node RaftNode, stopped on exit (after ``before_stop``, which
    releases whatever a test held, so that stopping does not wait on it)."""
    config = RaftConfig(node_id=0, peers=(0,))
    node = RaftNode(
        config,
        storage,
        RecordingTransport(),
        sm,
        timing=NodeTiming(tick_interval_s=0.002),
        snapshot_threshold_bytes=threshold,
    )
    await node.start()
    try:
        yield node
    finally:
        before_stop()
        await node.stop()


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
    await wait_for(lambda: node.core.applying_index >= node.core.last_index)


def test_snapshot_is_encoded_off_the_event_loop_and_compacts_storage_and_core() -> None:
    """Past the threshold the node snapshots at its applied index: the encoder runs in the
    snapshot thread, and storage and core both drop the log up to the snapshot."""

    async def main() -> None:
        sm, storage = Recorder(), MemoryStorage()
        async with running_node(sm, storage, threshold=2000) as node:
            await become_leader_and_submit(node, 100)
            await wait_for(lambda: node.core.snapshot is not None and not node._snapshotting)
            snapshot = node.core.snapshot
            assert snapshot is not None
            assert storage.snapshot == snapshot
            assert node.core.first_index == snapshot.index + 1
            # The encoded state is the state at the snapshot's index (one no-op first).
            assert int(snapshot.data) == snapshot.index - 1
            assert sm.encoder_threads and all("-snap" in t for t in sm.encoder_threads)

    asyncio.run(main())


def test_readys_are_saved_while_a_snapshot_is_written() -> None:
    """Writing a snapshot's data (stage_snapshot) happens off the storage thread, so new
    entries keep being persisted and committed meanwhile; then compact() on the storage
    thread records it. This is what keeps a 100 MB snapshot from stalling commits."""

    async def main() -> None:
        sm, storage = Recorder(), GatedStorage()
        async with running_node(sm, storage, 2000, before_stop=storage.stage_gate.set) as node:
            await become_leader_and_submit(node, 100)
            await wait_for(storage.staging.is_set)
            saves, applied = storage.saves, node.core.applying_index
            await become_leader_and_submit(node, 20)  # committed while the write is held
            assert storage.saves > saves and node.core.applying_index >= applied + 20
            assert storage.snapshot is None and node._snapshotting
            storage.stage_gate.set()
            await wait_for(lambda: not node._snapshotting)
            assert storage.snapshot is not None and storage.snapshot == node.core.snapshot
            assert "-snap" in storage.threads["stage"] and "-io" in storage.threads["compact"]

    asyncio.run(main())


def test_a_storage_failure_stops_the_node_with_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    """A node that cannot persist fails (fail-stop): wait_failed() hands out the error, and
    one log line says which node failed where; the server process exits on it."""

    async def main() -> BaseException:
        sm, storage = Recorder(), FailingStorage()
        async with running_node(sm, storage, threshold=None) as node:
            await become_leader_and_submit(node, 5)
            storage.fail = True
            node.submit(b"lost")
            return await asyncio.wait_for(node.wait_failed(), timeout=10)

    failure = asyncio.run(main())
    assert isinstance(failure, StorageError)
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "CRITICAL"]
    assert line.startswith("n0 [term 1] failed at index 7, stopping: raft.db: save failed")


def test_snapshot_overtaken_while_encoding_is_skipped() -> None:
    """A snapshot taken at index i is dropped, not stored, if the log was compacted past i
    while it was being encoded (as after a leader's InstallSnapshot)."""

    async def main() -> None:
        sm, storage = Recorder(), MemoryStorage()
        sm.gate.clear()

        def release() -> None:
            sm.gate.set()
            node.snapshot_threshold_bytes = None

        async with running_node(sm, storage, 2000, before_stop=release) as node:
            await become_leader_and_submit(node, 100)
            await wait_for(lambda: node._snapshotting)
            # Meanwhile the log is replaced by a newer snapshot.
            newer = Snapshot(
                node.core.applying_index, node.core.term(node.core.applying_index) or 0, b"x"
            )
            storage.compact(newer)
            node.core.compact(newer)
            sm.gate.set()
            await wait_for(lambda: not node._snapshotting)
            assert node.core.snapshot == newer
            assert storage.snapshot == newer

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


class SlowInlineWorkers:
    """Workers for a virtual-time loop: every call takes ``delay_s`` of loop time."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    async def storage(self, fn: Callable[..., T], *args: object) -> T:
        await asyncio.sleep(self.delay_s)
        return fn(*args)

    async def encode(self, fn: Callable[..., T], *args: object) -> T:
        await asyncio.sleep(self.delay_s)
        return fn(*args)

    def shutdown(self) -> None:
        pass


def test_a_load_faster_than_fsync_does_not_starve_the_snapshot() -> None:
    """Commands arriving faster than saves complete keep the Ready loop from ever
    draining; the node still snapshots once the log passes the threshold, rather than
    letting it grow without bound. Virtual time: every save takes 5 ms, a command
    arrives every 1 ms, and the run is the same every time."""
    loop = VirtualTimeLoop()

    async def main() -> int:
        sm, storage = Recorder(), CountingStorage()
        node = RaftNode(
            RaftConfig(node_id=0, peers=(0,)),
            storage,
            RecordingTransport(),
            sm,
            workers=SlowInlineWorkers(0.005),
            timing=NodeTiming(tick_interval_s=0.01),
            snapshot_threshold_bytes=4000,
        )
        await node.start()
        try:
            while not node.get_state()[1]:
                await asyncio.sleep(0.01)
            for n in range(3000):  # 3 s of load at 1 command per ms
                assert node.submit(b"command-%d" % n) is not None
                await asyncio.sleep(0.001)
                if storage.compactions:
                    return n
            return -1
        finally:
            node.halt()

    try:
        submitted = loop.run_until_complete(main())
    finally:
        loop.close()

    assert submitted > 0, "no snapshot while the load lasted"


class CountingStorage(MemoryStorage):
    """MemoryStorage that counts the snapshots recorded with compact()."""

    def __init__(self) -> None:
        super().__init__()
        self.compactions = 0

    def compact(self, snapshot: Snapshot) -> None:
        self.compactions += 1
        super().compact(snapshot)
