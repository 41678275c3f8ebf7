"""Read-index reads through the RSM: confirmed, then applied, then answered from the store.

A stand-in node hands out read-index futures that the test resolves, so each
step of a read (confirmation, the wait for the apply, the answer) is seen alone.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest

from kvraft.errors import Busy, NotLeader, WrongLeader
from kvraft.kv_protocol import GetOk, GetOp, NoKeyResult, PutOp, RangeOp, RangeResult
from kvraft.raft.messages import Entry
from kvraft.server.commands import encode_command
from kvraft.server.driver_io import LoopClock
from kvraft.server.kvstore import KVStore
from kvraft.server.node import RaftNode, ReadFailed
from kvraft.server.options import DEFAULT_MAX_PENDING_READS, ServerOptions
from kvraft.server.rsm import RSM

from .node_support import single_node_options


class ReadingLeader:
    """What RSM.read uses of a RaftNode: read_index() futures the test settles; its
    clock and ``running`` are what the lease keeper reads."""

    def __init__(self) -> None:
        self.leading = True
        self.reads: list[asyncio.Future[int]] = []
        self.clock = LoopClock()
        self.running = True

    @property
    def pending_reads(self) -> int:
        return sum(1 for future in self.reads if not future.done())

    def read_index(self) -> asyncio.Future[int] | None:
        if not self.leading:
            return None
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.reads.append(future)
        return future


def make_rsm(**limits: Any) -> tuple[RSM, ReadingLeader]:
    rsm = RSM(0, KVStore(), op_timeout_s=limits.pop("op_timeout_s", 5.0), **limits)
    node = ReadingLeader()
    rsm.attach(cast(RaftNode, node))
    return rsm, node


def put_at(rsm: RSM, index: int, key: str, value: str) -> None:
    command = encode_command(PutOp(key, value, 0, "writer", index, 1))
    rsm.apply(Entry(term=1, index=index, command=command))


def get(key: str) -> GetOp:
    return GetOp(key, "reader", 1, 1)


async def started(coro: Any) -> asyncio.Task[Any]:
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(0)  # runs up to its first wait
    return task


def test_a_read_waits_for_its_round_then_its_index_then_answers_from_the_store() -> None:
    async def main() -> None:
        rsm, node = make_rsm()
        put_at(rsm, 1, "k", "one")
        task = await started(rsm.read(get("k")))
        assert not task.done()  # no round yet

        node.reads[0].set_result(2)  # confirmed at index 2, not applied yet
        await asyncio.sleep(0)
        assert not task.done()
        put_at(rsm, 2, "k2", "two")  # index 2 applied (another key)

        assert await task == GetOk("one", 1)
        assert rsm.index_reads == 1

    asyncio.run(main())


def test_read_results_are_those_of_a_logged_read() -> None:
    """A hit, a missing key and a range answer what the same ops answer through the log."""

    async def main() -> None:
        rsm, node = make_rsm()
        put_at(rsm, 1, "a", "x")
        logged = RSM(1, KVStore(), op_timeout_s=5.0)
        put_at(logged, 1, "a", "x")
        reads: list[GetOp | RangeOp] = [
            get("a"),
            get("missing"),
            RangeOp("", "", 0, False, "reader", 1, 1),
        ]
        for index, op in enumerate(reads, start=2):
            task = await started(rsm.read(op))
            node.reads[-1].set_result(1)
            through_the_log = logged.sessions.apply(logged.store, op, index)
            assert await task == through_the_log
        assert isinstance(through_the_log, RangeResult)

    asyncio.run(main())


def test_at_the_pending_read_bound_the_leader_takes_reads_and_one_past_it_answers_busy() -> None:
    async def main() -> None:
        rsm, node = make_rsm(max_pending_reads=3)
        tasks = [await started(rsm.read(get("k"))) for _ in range(3)]
        assert node.pending_reads == 3

        with pytest.raises(Busy, match="3 reads pending"):
            await rsm.read(get("k"))
        assert len(node.reads) == 3 and rsm.busy_refusals == 1

        node.reads[0].set_result(0)  # one answered: room for one more
        assert isinstance(await tasks[0], NoKeyResult)
        more = await started(rsm.read(get("k")))
        assert len(node.reads) == 4
        for future in node.reads[1:]:
            future.set_result(0)
        await asyncio.gather(*tasks[1:], more)

    asyncio.run(main())


def test_a_follower_answers_not_leader_and_holds_nothing() -> None:
    async def main() -> None:
        rsm, node = make_rsm()
        node.leading = False
        with pytest.raises(NotLeader):
            await rsm.read(get("k"))
        assert node.reads == []

    asyncio.run(main())


def test_a_read_whose_leader_stepped_down_answers_wrong_leader() -> None:
    async def main() -> None:
        rsm, node = make_rsm()
        task = await started(rsm.read(get("k")))
        node.reads[0].set_exception(ReadFailed("n0 stopped leading at term 3"))
        with pytest.raises(WrongLeader, match="stopped leading"):
            await task

    asyncio.run(main())


def test_a_read_never_confirmed_times_out_as_wrong_leader() -> None:
    async def main() -> None:
        rsm, _ = make_rsm(op_timeout_s=0.01)
        with pytest.raises(WrongLeader, match="not confirmed"):
            await rsm.read(get("k"))

    asyncio.run(main())


def test_the_pending_read_bound_is_at_least_one(tmp_path: Path) -> None:
    common = single_node_options(tmp_path)
    assert ServerOptions(**common).max_pending_reads == DEFAULT_MAX_PENDING_READS
    ServerOptions(**common, max_pending_reads=1)
    with pytest.raises(ValueError, match="max_pending_reads"):
        ServerOptions(**common, max_pending_reads=0)
