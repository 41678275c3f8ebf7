"""A leader's admission budget: proposals and bytes submitted and not yet applied.

At the bound the RSM still submits; one past it answers Busy without
submitting, so overload cannot grow the log or the waiters without bound.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest

from kvraft.errors import Busy, NotLeader, WrongLeader
from kvraft.kv_protocol import PutOk, PutOp
from kvraft.raft.messages import Entry
from kvraft.server.commands import encode_command
from kvraft.server.driver_io import LoopClock
from kvraft.server.kvstore import KVStore
from kvraft.server.node import RaftNode
from kvraft.server.options import ServerOptions
from kvraft.server.rsm import RSM

from .node_support import single_node_options


class LeaderStandIn:
    """What the RSM uses of a RaftNode: submit() appends to a log it keeps; its clock
    and ``running`` are what the lease keeper reads."""

    def __init__(self) -> None:
        self.log: list[bytes] = []
        self.leading = True
        self.clock = LoopClock()
        self.running = True

    def submit(self, command: bytes) -> tuple[int, int] | None:
        if not self.leading:
            return None
        self.log.append(command)
        return len(self.log), 1


def op(rid: int, value: str = "v") -> PutOp:
    return PutOp(f"k{rid}", value, 0, "c", rid, 1)


def make_rsm(**limits: Any) -> tuple[RSM, LeaderStandIn]:
    rsm = RSM(0, KVStore(), op_timeout_s=5.0, **limits)
    node = LeaderStandIn()
    rsm.attach(cast(RaftNode, node))
    return rsm, node


def apply_next(rsm: RSM, node: LeaderStandIn, index: int) -> None:
    rsm.apply(Entry(term=1, index=index, command=node.log[index - 1]))


async def _submit(rsm: RSM, rids: range) -> list[asyncio.Task[Any]]:
    tasks = [asyncio.ensure_future(rsm.execute(op(rid))) for rid in rids]
    await asyncio.sleep(0)  # each task runs up to its wait
    return tasks


def test_at_the_proposal_bound_the_leader_submits_and_one_past_it_answers_busy() -> None:
    async def main() -> None:
        rsm, node = make_rsm(max_inflight_proposals=3)
        tasks = await _submit(rsm, range(1, 4))
        assert len(node.log) == 3 and rsm.inflight_proposals == 3
        with pytest.raises(Busy, match="3 proposals"):
            await rsm.execute(op(4))
        assert len(node.log) == 3 and rsm.busy_refusals == 1
        apply_next(rsm, node, 1)  # one applied: room for one more
        assert await tasks[0] == PutOk(1, 1)
        more = await _submit(rsm, range(4, 5))
        assert len(node.log) == 4
        for index in (2, 3, 4):
            apply_next(rsm, node, index)
        await asyncio.gather(*tasks, *more)
        assert rsm.inflight_proposals == 0 and rsm.inflight_bytes == 0

    asyncio.run(main())


def test_at_the_byte_bound_the_leader_submits_and_one_byte_past_it_answers_busy() -> None:
    async def main() -> None:
        size = len(encode_command(op(1)))
        assert all(len(encode_command(op(r))) == size for r in range(1, 4))
        rsm, node = make_rsm(max_inflight_bytes=2 * size)
        tasks = await _submit(rsm, range(1, 3))
        assert rsm.inflight_bytes == 2 * size
        with pytest.raises(Busy, match="bytes"):
            await rsm.execute(op(3))
        apply_next(rsm, node, 1)
        rsm2, _ = make_rsm(max_inflight_bytes=2 * size - 1)
        held = await _submit(rsm2, range(1, 2))
        with pytest.raises(Busy):
            await rsm2.execute(op(2))
        for task in [*tasks, *held]:
            task.cancel()

    asyncio.run(main())


def test_losing_leadership_empties_the_budget() -> None:
    async def main() -> None:
        rsm, node = make_rsm(max_inflight_proposals=1)
        tasks = await _submit(rsm, range(1, 2))
        rsm.on_role_change(2, False)
        assert rsm.inflight_proposals == 0
        node.leading = False
        with pytest.raises(NotLeader):
            await rsm.execute(op(2))
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def test_a_resend_is_answered_with_the_first_result_through_the_rsm() -> None:
    """Two copies of one put in the log: both waiters get PutOk, the key is at version 1."""

    async def main() -> None:
        rsm, node = make_rsm()
        first = await _submit(rsm, range(1, 2))
        second = asyncio.ensure_future(rsm.execute(op(1)))
        await asyncio.sleep(0)
        apply_next(rsm, node, 1)
        apply_next(rsm, node, 2)
        assert await first[0] == PutOk(1, 1) and await second == PutOk(1, 1)
        assert rsm.store.get("k1") == ("v", 1)

    asyncio.run(main())


def test_the_byte_budget_must_hold_the_largest_put(tmp_path: Path) -> None:
    """At the bound (the largest value plus the frame's reserve) the options are accepted;
    one byte less and the largest put allowed could never be admitted."""
    common = single_node_options(tmp_path)
    ServerOptions(**common, max_value_bytes=1000, max_inflight_bytes=1000 + 4096)
    with pytest.raises(ValueError, match="--max-inflight-bytes"):
        ServerOptions(**common, max_value_bytes=1000, max_inflight_bytes=1000 + 4095)
    with pytest.raises(ValueError, match="--max-inflight-proposals"):
        ServerOptions(**common, max_inflight_proposals=0)


def test_a_wait_until_applied_outlives_the_op_timeout_and_ends_when_the_node_stops() -> None:
    """The lease keeper's proposals: never answered WrongLeader by a timeout while the
    node leads (the entry may still apply, and must not be proposed twice), but a
    halted node, which tells its state machine nothing, ends the wait."""

    async def main() -> None:
        rsm = RSM(0, KVStore(), op_timeout_s=0.05)
        node = LeaderStandIn()
        rsm.attach(cast(RaftNode, node))
        applied = asyncio.ensure_future(rsm.execute(op(1), until_applied=True))
        await asyncio.sleep(0.2)  # four op timeouts
        assert not applied.done() and len(node.log) == 1  # proposed once, still waiting
        apply_next(rsm, node, 1)
        assert isinstance(await applied, PutOk)

        stranded = asyncio.ensure_future(rsm.execute(op(2), until_applied=True))
        await asyncio.sleep(0.1)
        assert not stranded.done()
        node.running = False  # halted
        with pytest.raises(WrongLeader, match="stopped before index 2 applied"):
            await asyncio.wait_for(stranded, 1.0)
        assert len(node.log) == 2

    asyncio.run(main())
