"""A storage stall on a real leader, twice its election timeout, does not depose it.

A leader's heartbeats depend on nothing it has not yet persisted (its term and
vote are on disk), so they leave on time while its own save is stalled
(``RaftNode._send_while_saving``, Raft thesis §10.2.1). Before that, a save
slower than the followers' election timeout silenced the leader, a follower
campaigned, and a healthy leader lost its term to a slow disk. The stall is
made with the ``raft.stall_disk`` test hook, on the storage thread, where a
stalled fsync would block.
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

import pytest

from kvraft.errors import InvalidArgument, RemoteError
from kvraft.rpc.client import RpcClient
from kvraft.rpc.codec import client_sender
from kvraft.testing.cluster import Cluster
from kvraft.testing.history import History
from kvraft.testing.linearizability import assert_linearizable
from kvraft.testing.waiting import wait_until
from tests.cluster.kv_support import BackgroundPutters, find_leader, statuses

pytestmark = pytest.mark.slow

# The default election timeout is 15 ticks of 10 ms, drawn in [150, 300) ms.
ELECTION_TIMEOUT_MAX_S = 0.3
STALL_S = 2.5 * ELECTION_TIMEOUT_MAX_S


def hook(cluster: Cluster, i: int, method: str, args: Any) -> Any:
    """One test-hook call on server ``i``'s private port (no proxy faults)."""

    async def call() -> Any:
        rpc = RpcClient(cluster.private_addresses[i], client_sender("adversary"))
        try:
            return await rpc.call(method, args, timeout=5)
        finally:
            rpc.close()

    return asyncio.run(call())


SLOW_FSYNC = re.compile(r"slow fsync: (\d+) ms")


def stalled_saves(cluster: Cluster, i: int) -> int:
    """How many saves server ``i`` logged as slow, lasting at least the stall."""
    return sum(
        int(m.group(1)) >= STALL_S * 1000 - 1
        for m in SLOW_FSYNC.finditer(cluster.log_tail(i, 5000))
    )


def test_raft_stall_disk_refuses_what_is_not_seconds_in_0_to_30(make_cluster: Any) -> None:
    """The hook's bound, at and past each edge: a typo cannot wedge a node for long."""
    cluster: Cluster = make_cluster(1)
    for bad in (0, 0.0, -1.0, 30.000001, math.nan, math.inf, True, "1", None):
        with pytest.raises(InvalidArgument, match=r"raft\.stall_disk takes seconds"):
            hook(cluster, 0, "raft.stall_disk", bad)
    assert hook(cluster, 0, "raft.stall_disk", 30) is None  # the bound itself is taken
    # ... and only by a test server: the hook is refused without --test-hooks.
    plain: Cluster = make_cluster(1, test_hooks=False)
    with pytest.raises(RemoteError, match="needs a server started with --test-hooks"):
        hook(plain, 0, "raft.stall_disk", 1.0)


def test_a_leader_whose_disk_stalls_twice_the_election_timeout_keeps_its_term(
    make_cluster: Any,
) -> None:
    cluster: Cluster = make_cluster(3)
    leader = find_leader(cluster)
    history = History()
    work = BackgroundPutters(cluster, history)
    try:
        wait_until(lambda: work.total() >= 5, 20, message="puts flowing")
        before = {int(r["id"]): r for r in statuses(cluster)}
        term = int(before[leader]["term"])
        assert before[leader]["role"] == "leader", before[leader]
        assert all(int(r["term"]) == term for r in before.values()), before

        slow_before = stalled_saves(cluster, leader)
        hook(cluster, leader, "raft.stall_disk", STALL_S)
        # The clients keep the leader saving, so the stall starts at once; the
        # leader logs the save as slow when it ends.
        wait_until(
            lambda: stalled_saves(cluster, leader) > slow_before,
            10,
            message=f"n{leader}'s stalled save ended",
        )
        after = statuses(cluster)
        assert all(r.get("reachable") for r in after), after
        assert [int(r["term"]) for r in after] == [term] * 3, after
        assert [r["role"] == "leader" for r in after] == [i == leader for i in range(3)], after

        resumed = work.total()
        wait_until(lambda: work.total() >= resumed + 10, 20, message="puts resumed")
    finally:
        work.finish()
    assert find_leader(cluster) == leader
    assert int(statuses(cluster)[leader]["term"]) == term
    assert_linearizable(history)
