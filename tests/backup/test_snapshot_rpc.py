"""snapshot.open/read/close: chunks that fit the frame, few open at once, unknown ids refused."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from kvraft.errors import RemoteError
from kvraft.kv_protocol import GetOp
from kvraft.raft.core import Role
from kvraft.raft.messages import Entry
from kvraft.rpc.codec import Reply, encode_envelope
from kvraft.server import backup, state_snapshot
from kvraft.server.backup import (
    CHUNK_OVERHEAD_BYTES,
    MAX_CHUNK_BYTES,
    MAX_OPEN_SNAPSHOTS,
    SNAPSHOT_IDLE_TIMEOUT_S,
)
from kvraft.server.commands import decode_command
from kvraft.server.driver_io import LoopClock
from kvraft.server.kvstore import KVStore
from kvraft.server.rsm import RSM

FRAME = 64 * 1024


class InlineWorkers:
    async def encode(self, fn: Callable[..., Any], *args: object) -> Any:
        return fn(*args)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_server(
    keys: int = 200, role: Role = Role.LEADER, clock: Callable[[], float] | None = None
) -> tuple[backup.SnapshotServer, Clock]:
    store = KVStore()
    for i in range(keys):
        store.write(f"key-{i:05d}", "v" * 1000, i + 1)
        store.set_revision(i + 1)
    rsm = RSM(0, store, op_timeout_s=1.0)
    core = SimpleNamespace(
        role=role, applying_index=keys, current_term=4, term=lambda index: 4 if index else 0
    )
    node = SimpleNamespace(id=0, core=core, workers=InlineWorkers())
    fake = Clock()

    async def barrier() -> None:
        barriers.append(core.applying_index)

    server = backup.SnapshotServer(
        node,  # type: ignore[arg-type]
        rsm,
        cluster_id="c1",
        max_frame_bytes=FRAME,
        clock=clock or fake,
        barrier=barrier,
    )
    return server, fake


barriers: list[int] = []


def call(server: backup.SnapshotServer, method: str, args: Any = None) -> Any:
    return asyncio.run(server.handle(method, args))


def test_a_snapshot_larger_than_a_frame_comes_in_chunks_that_each_fit_one() -> None:
    server, _ = make_server()
    meta = call(server, backup.OPEN)
    assert meta["size"] > 3 * FRAME
    assert (meta["index"], meta["term"], meta["revision"], meta["cluster_id"]) == (
        200,
        4,
        200,
        "c1",
    )
    assert meta["chunk_bytes"] == FRAME - CHUNK_OVERHEAD_BYTES
    chunks = []
    while (offset := sum(map(len, chunks))) < meta["size"]:
        chunk = call(server, backup.READ, [meta["id"], offset, 1 << 30])
        # The whole reply, as the RPC server would frame it, fits the frame limit.
        assert len(encode_envelope(Reply(1 << 40, None, chunk))) <= FRAME
        chunks.append(chunk)
    assert len(chunks[0]) == meta["chunk_bytes"]
    data = b"".join(chunks)
    assert hashlib.sha256(data).digest() == meta["sha256"]
    assert len(state_snapshot.decode(data)[1]) == 200
    assert call(server, backup.READ, [meta["id"], meta["size"], 10]) == b""
    call(server, backup.CLOSE, meta["id"])
    assert server.open_count == 0


def test_chunks_stop_at_the_chunk_bound_whatever_the_frame() -> None:
    server, _ = make_server(keys=1)
    big = backup.SnapshotServer(
        server.node, server.rsm, cluster_id="c", max_frame_bytes=16 * 1024 * 1024
    )
    assert big.chunk_bytes == MAX_CHUNK_BYTES
    at = backup.SnapshotServer(
        server.node,
        server.rsm,
        cluster_id="c",
        max_frame_bytes=MAX_CHUNK_BYTES + CHUNK_OVERHEAD_BYTES + 1,
    )
    assert at.chunk_bytes == MAX_CHUNK_BYTES
    below = backup.SnapshotServer(
        server.node, server.rsm, cluster_id="c", max_frame_bytes=MAX_CHUNK_BYTES
    )
    assert below.chunk_bytes == MAX_CHUNK_BYTES - CHUNK_OVERHEAD_BYTES


def test_a_client_may_ask_for_smaller_chunks() -> None:
    server, _ = make_server()
    sid = call(server, backup.OPEN)["id"]
    assert len(call(server, backup.READ, [sid, 0, 1])) == 1
    assert len(call(server, backup.READ, [sid, 0, 1000])) == 1000


def test_at_the_bound_of_open_snapshots_one_more_is_busy_and_a_close_frees_a_slot() -> None:
    server, _ = make_server(keys=3)
    ids = [call(server, backup.OPEN)["id"] for _ in range(MAX_OPEN_SNAPSHOTS)]
    with pytest.raises(RemoteError) as refused:
        call(server, backup.OPEN)
    assert refused.value.code == "busy"
    call(server, backup.CLOSE, ids[0])
    call(server, backup.CLOSE, ids[0])  # idempotent
    assert call(server, backup.OPEN)["id"] not in ids


def test_an_idle_snapshot_expires_at_the_timeout_and_not_before() -> None:
    server, clock = make_server(keys=3)
    sid = call(server, backup.OPEN)["id"]
    clock.now += SNAPSHOT_IDLE_TIMEOUT_S
    assert call(server, backup.READ, [sid, 0, 10])  # at the timeout: still there, and touched
    clock.now += SNAPSHOT_IDLE_TIMEOUT_S + 0.001
    with pytest.raises(RemoteError) as unknown:
        call(server, backup.READ, [sid, 0, 10])
    assert unknown.value.code == "snapshot_unknown"
    assert server.open_count == 0


def test_an_abandoned_snapshot_is_dropped_by_its_timer_with_no_call_coming(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that opened a snapshot and vanished: the memory goes without another call."""
    monkeypatch.setattr(backup, "SNAPSHOT_IDLE_TIMEOUT_S", 0.2)
    server, _ = make_server(keys=3, clock=time.monotonic)

    async def scenario() -> float:
        await server.handle(backup.OPEN, None)
        assert server.open_count == 1
        started = time.monotonic()
        deadline = started + 10.0
        while server.open_count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert server.open_count == 0, "the idle snapshot was never dropped"
        return time.monotonic() - started

    assert asyncio.run(scenario()) >= 0.2


@pytest.mark.parametrize(
    "args",
    [None, ["id"], ["id", 0], ["id", "0", 1], [1, 0, 1], ["id", 0, 0], ["id", True, 1]],
)
def test_a_malformed_read_is_a_bad_request(args: Any) -> None:
    server, _ = make_server(keys=1)
    with pytest.raises(RemoteError) as bad:
        call(server, backup.READ, args)
    assert bad.value.code == "bad_request"


def test_an_unknown_id_or_an_offset_past_the_end_is_refused() -> None:
    server, _ = make_server(keys=1)
    with pytest.raises(RemoteError) as unknown:
        call(server, backup.READ, ["nope", 0, 10])
    assert unknown.value.code == "snapshot_unknown"
    meta = call(server, backup.OPEN)
    with pytest.raises(RemoteError) as past:
        call(server, backup.READ, [meta["id"], meta["size"] + 1, 10])
    assert past.value.code == "bad_request"
    with pytest.raises(RemoteError):
        call(server, backup.READ, [meta["id"], -1, 10])


def test_open_waits_for_its_barrier_and_a_failed_barrier_frees_the_slot() -> None:
    server, _ = make_server(keys=3)
    before = len(barriers)
    call(server, backup.OPEN)
    assert len(barriers) == before + 1

    async def deposed() -> None:
        raise RemoteError("not_leader", "n0: leadership lost")

    server.barrier = deposed
    with pytest.raises(RemoteError) as refused:
        call(server, backup.OPEN)
    assert refused.value.code == "not_leader"
    assert server.open_count == 1


def test_the_barrier_is_a_read_through_the_log_that_opens_no_session() -> None:
    """The default barrier: a get the RSM submits; applied, it leaves the sessions as they were."""

    server, _ = make_server(keys=3)
    submitted: list[bytes] = []

    def submit(command: bytes) -> tuple[int, int]:
        submitted.append(command)
        return 10, 4

    fake_node = SimpleNamespace(submit=submit, clock=LoopClock(), running=True)
    server.rsm.attach(fake_node)  # type: ignore[arg-type]

    async def scenario() -> None:
        task = asyncio.create_task(server._read_through_the_log())
        await asyncio.sleep(0)
        assert len(submitted) == 1
        op = decode_command(submitted[0])
        assert isinstance(op, GetOp)
        server.rsm.apply(Entry(index=10, term=4, command=submitted[0]))
        await task

    sessions = len(server.rsm.sessions)
    asyncio.run(scenario())
    assert len(server.rsm.sessions) == sessions


def test_only_a_leader_opens_a_snapshot() -> None:
    server, _ = make_server(role=Role.FOLLOWER)
    with pytest.raises(RemoteError) as refused:
        call(server, backup.OPEN)
    assert refused.value.code == "not_leader"
    assert server.open_count == 0


def test_a_frame_too_small_for_chunks_is_refused() -> None:
    server, _ = make_server(keys=1)
    with pytest.raises(ValueError, match="no room"):
        backup.SnapshotServer(
            server.node, server.rsm, cluster_id="c", max_frame_bytes=CHUNK_OVERHEAD_BYTES
        )


def test_the_backup_methods_need_an_admin_token() -> None:
    from kvraft.rpc.tokens import Role as TokenRole
    from kvraft.server.service import METHOD_ROLES

    assert all(METHOD_ROLES[method] is TokenRole.ADMIN for method in backup.METHODS)
