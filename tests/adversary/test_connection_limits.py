"""Connection floods, idle connections and slow headers against a real cluster's node.

The node runs with small bounds (``--max-connections 8 --idle-timeout-s 2
--frame-timeout-s 1``: a slow frame must close before the idle bound could);
each bound is met (served) and passed by one (closed), and the cluster's
clients still see a linearizable history.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from kvraft.rpc.codec import Reply, Request, decode_envelope, encode_envelope
from kvraft.rpc.framing import frame
from kvraft.testing.cluster import Cluster
from kvraft.testing.history import History
from kvraft.testing.linearizability import assert_linearizable
from kvraft.testing.waiting import wait_until
from tests.cluster.kv_support import RecordingClient, find_leader

pytestmark = pytest.mark.slow

MAX_CONNECTIONS = 8
IDLE_S = 2.0
FRAME_S = 1.0
LIMIT_ARGS = [
    "--max-connections", str(MAX_CONNECTIONS),
    "--idle-timeout-s", str(IDLE_S),
    "--frame-timeout-s", str(FRAME_S),
]  # fmt: skip


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def answered(stream: Stream, rid: int) -> bool:
    """Whether a request on ``stream`` gets its reply (False: the server closed it)."""
    reader, writer = stream
    writer.write(frame(encode_envelope(Request(rid, "no-such-method", "cflood", None))))
    try:
        async with asyncio.timeout(3.0):
            header = await reader.readexactly(4)
            await reader.readexactly(int.from_bytes(header, "big"))
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return False
    return True


async def closed_within(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    with contextlib.suppress(ConnectionResetError):
        async with asyncio.timeout(timeout_s):
            while await reader.read(65536):
                pass
    return True


def check_serving(cluster: Cluster) -> None:
    history = History()
    client = RecordingClient(cluster, history)
    try:
        version = client.put(f"after-{time.monotonic_ns()}", "v", 0)
        assert version == 1
    finally:
        client.close()
    assert_linearizable(history, 20.0)


async def status_on(stream: Stream, rid: int) -> dict[str, Any]:
    """The node's ``status``, asked on ``stream`` (so it counts this connection too)."""
    reader, writer = stream
    writer.write(frame(encode_envelope(Request(rid, "status", "cflood", None))))
    async with asyncio.timeout(3.0):
        header = await reader.readexactly(4)
        reply = decode_envelope(await reader.readexactly(int.from_bytes(header, "big")))
    assert isinstance(reply, Reply) and reply.error is None, reply
    return dict(reply.result)


def test_a_connection_flood_is_capped_and_peers_keep_their_connections(
    make_cluster: Any,
) -> None:
    cluster: Cluster = make_cluster(3, server_args=LIMIT_ARGS)
    # The leader: both followers hold a connection to it (their replies); a
    # follower hears from the leader only, so it would hold one.
    target = find_leader(cluster)
    host, port = cluster.private_addresses[target].rsplit(":", 1)

    async def flood() -> tuple[int, int, bool]:
        probe = await asyncio.open_connection(host, int(port))
        held: list[Stream] = [probe]
        try:
            # Start from the server's own count, once only the two peers'
            # connections and the probe are open (a connection closed a moment
            # ago, the harness's leader probe, may still be counted).
            loop = asyncio.get_running_loop()
            give_up = loop.time() + 10.0
            rid = 0
            while (open_before := (await status_on(probe, rid))["connections"]) != 3:
                assert loop.time() < give_up, f"{open_before} connections open, not 3"
                rid += 1
                await asyncio.sleep(0.05)
            while len(held) < MAX_CONNECTIONS - 2:
                stream = await asyncio.open_connection(host, int(port))
                held.append(stream)
                if not await answered(stream, len(held)):
                    break
            served = sum([await answered(stream, 1000 + i) for i, stream in enumerate(held)])
            one_more = await asyncio.open_connection(host, int(port))
            refused = await closed_within(one_more[0], 3.0) and not await answered(one_more, 99)
            one_more[1].close()
            return open_before, served, refused
        finally:
            for _, writer in held:
                writer.close()

    # The two peers' connections and ours fill the cap exactly; one more is closed.
    assert asyncio.run(flood()) == (3, MAX_CONNECTIONS - 2, True)
    wait_until(
        lambda: "refused a connection" in cluster.log_tail(target, 500),
        5.0,
        message="the refusal logged",
    )
    check_serving(cluster)


def test_idle_connections_and_slow_frames_are_closed_at_their_bound(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster(3, server_args=LIMIT_ARGS)
    find_leader(cluster)
    host, port = cluster.private_addresses[1].rsplit(":", 1)
    request = frame(encode_envelope(Request(1, "status", "cslow", None)))

    async def probe(partial: bytes) -> float:
        reader, writer = await asyncio.open_connection(host, int(port))
        started = time.monotonic()
        if partial:
            writer.write(partial)
        try:
            assert await closed_within(reader, 10.0)
        finally:
            writer.close()
        return time.monotonic() - started

    async def within_bounds() -> None:
        # A frame dribbled over about half the frame bound is served.
        reader, writer = await asyncio.open_connection(host, int(port))
        for i in range(0, len(request), 4):
            writer.write(request[i : i + 4])
            await asyncio.sleep(FRAME_S / 2 / (len(request) / 4))
        header = await reader.readexactly(4)
        await reader.readexactly(int.from_bytes(header, "big"))
        writer.close()

    asyncio.run(within_bounds())
    idle = asyncio.run(probe(b""))
    slow_header = asyncio.run(probe(request[:2]))
    slow_body = asyncio.run(probe(request[: len(request) - 1]))
    assert IDLE_S - 0.1 <= idle < IDLE_S + 3.0, idle
    assert FRAME_S - 0.1 <= slow_header < IDLE_S - 0.3, slow_header
    assert FRAME_S - 0.1 <= slow_body < IDLE_S - 0.3, slow_body
    # Peers talk far more often than the idle bound: the cluster never noticed.
    check_serving(cluster)
