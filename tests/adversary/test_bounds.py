"""Every bound a client or a peer's traffic can reach, at the bound and one past, on real
server processes (the limits paragraph of docs/architecture.md lists them with reasons).

Forged peer messages on unauthenticated connections are another suite's; here the
server's own checks (``check_op``) and the frame-derived Raft limits are exercised.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kvraft.client.async_client import SESSION_SUFFIX_BYTES
from kvraft.client.client import Client
from kvraft.errors import InvalidArgument
from kvraft.kv_protocol import (
    MAX_CLIENT_ID_BYTES,
    MAX_REQUEST_ID,
    GetOk,
    GetOp,
    NoKeyResult,
    PutOp,
)
from kvraft.rpc.client import RpcClient
from kvraft.rpc.codec import client_sender
from kvraft.testing.cluster import Cluster
from kvraft.testing.waiting import wait_until
from tests.cluster.kv_support import find_leader, statuses
from tests.cluster.test_snapshots import check_all, fill, status_of

pytestmark = pytest.mark.slow


def raw_call(address: str, method: str, op: Any) -> Any:
    """One request as any process could send it, bypassing the client's own checks."""

    async def call() -> Any:
        rpc = RpcClient(address, client_sender(op.client_id))
        try:
            return await rpc.call(method, op, timeout=10)
        finally:
            rpc.close()

    return asyncio.run(call())


def test_client_id_of_64_bytes_is_served_and_65_refused(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """64 UTF-8 bytes of client id are a client like another; 65 are refused by the
    server itself with InvalidArgument naming the bound, and nothing is applied."""
    cluster: Cluster = make_cluster(3)
    # A Client's own id leaves room for a renewed session's ".<n>" (12 bytes).
    own_bound = "é" * ((MAX_CLIENT_ID_BYTES - SESSION_SUFFIX_BYTES) // 2)  # 52 bytes
    with Client(cluster.addresses, deadline=30, client_id=own_bound) as c:
        c.put("k", "v", 0)
        assert c.get("k") == ("v", 1)
    with pytest.raises(InvalidArgument, match="client_id of 54 bytes exceeds the maximum of 52"):
        Client(cluster.addresses, deadline=30, client_id=own_bound + "é")
    leader = cluster.addresses[find_leader(cluster)]
    at_bound = "é" * (MAX_CLIENT_ID_BYTES // 2)  # 64 bytes, 32 characters: the server's bound
    first = GetOp(key="k", client_id=at_bound, request_id=1, acked_below=1)
    assert raw_call(leader, "get", first) == GetOk(value="v", version=1)

    past = PutOp(key="k", value="w", version=1, client_id="c" * 65, request_id=1, acked_below=1)
    with pytest.raises(InvalidArgument, match="client_id of 65 bytes exceeds the maximum of 64"):
        raw_call(leader, "put", past)
    with pytest.raises(InvalidArgument, match="client_id of 66 bytes"):
        raw_call(leader, "get", GetOp(key="k", client_id="é" * 33, request_id=1, acked_below=1))

    with Client(cluster.addresses, deadline=30) as c:
        assert c.get("k") == ("v", 1)


def test_request_id_of_2_63_minus_1_is_served_and_2_63_refused(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = make_cluster(3)
    with Client(cluster.addresses, deadline=30) as c:
        c.put("warm", "up", 0)  # a leader is elected
    leader = cluster.addresses[find_leader(cluster)]

    result = raw_call(
        leader,
        "get",
        GetOp(key="nope", client_id="raw", request_id=MAX_REQUEST_ID, acked_below=MAX_REQUEST_ID),
    )
    assert result == NoKeyResult()
    with pytest.raises(InvalidArgument, match="request_id must be an int in 0"):
        raw_call(
            leader,
            "get",
            GetOp(
                key="nope",
                client_id="raw",
                request_id=MAX_REQUEST_ID + 1,
                acked_below=MAX_REQUEST_ID + 1,
            ),
        )


FRAME = 65536
VALUE_BYTES = FRAME - 4096 - 500  # near the largest value this frame admits
SMALL_FRAME_ARGS = [
    "--max-frame-bytes", str(FRAME),
    "--max-value-bytes", str(FRAME - 4096),
    "--snapshot-threshold", "200000",
]  # fmt: skip


def test_a_lagging_follower_catches_up_by_install_snapshot_with_a_small_frame(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """With --max-frame-bytes 64 KiB and values near the largest it admits, a follower that
    was down while the log was compacted past it restarts and catches up through an
    InstallSnapshot many frames long (chunks sized from the frame; before, every chunk
    was 1 MiB, over the frame, and the leader's Ready loop stopped at the first one)."""
    cluster: Cluster = make_cluster(3, server_args=SMALL_FRAME_ARGS)
    with Client(cluster.addresses, deadline=60) as c:
        c.put("start", "x", 0)
        leader = find_leader(cluster)
        lagger = (leader + 1) % 3
        cluster.kill(lagger)
        expected = fill(c, keys=12, rounds=4, value_bytes=VALUE_BYTES)
        row = status_of(cluster, leader)
        assert row["snapshot_index"] > 0, row
        assert row["snapshot_bytes"] > 8 * FRAME, row  # the snapshot spans many frames
        cluster.restart(lagger)
        commit = status_of(cluster, leader)["commit_index"]
        wait_until(
            lambda: status_of(cluster, lagger)["applied_index"] >= commit,
            30,
            message=f"n{lagger} caught up to index {commit}",
        )
        assert status_of(cluster, lagger)["snapshot_index"] > 0
        # The caught-up follower is now needed for a majority.
        cluster.kill(leader)
        check_all(c, expected)
        assert all(r.get("reachable") for i, r in enumerate(statuses(cluster)) if i != leader)
