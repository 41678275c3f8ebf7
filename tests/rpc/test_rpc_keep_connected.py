"""Peer connections stay up: dialed before the first message, redialed after a loss,
never closed for idling, and a dead peer costs one attempt per reconnect interval.

A candidate sends each vote request once per election: on no connection, a
notify is dropped while it connects, so a vote request to a peer this node
had never needed (another follower, a newly promoted member) was lost, and a
leadership transfer to a newly promoted voter failed (the membership cluster
tests found it). Real RpcServers on loopback.
"""

from __future__ import annotations

import asyncio
import time

from rpc_support import run, serving, wait_until

from kvraft.rpc.admission import ConnectionLimits
from kvraft.rpc.client import RECONNECT_INTERVAL_S, RpcClient
from kvraft.rpc.peer_auth import Membership, PeerKey

KEY = PeerKey(b"keep-connected-test-secret-01", "kctest")
MEMBERSHIP = Membership(KEY, 0, frozenset({1}))
PEER_METHODS = frozenset({"raft"})


def peer_client(address: str) -> RpcClient:
    return RpcClient(address, "p1", peer_key=KEY, server_peer_id=0)


def test_a_kept_connection_is_up_before_any_message_and_redialed_after_a_loss() -> None:
    async def scenario() -> None:
        async with serving(peer_auth=MEMBERSHIP, peer_methods=PEER_METHODS) as (server, handler):
            client = peer_client(server.address)
            try:
                client.keep_connected()
                await wait_until(lambda: client.connected, what="connected with no message")
                assert client.notify("raft", "first") is True  # written, not dropped
                await wait_until(lambda: handler.notes == [("raft", "p1", "first")], what="note")

                (first,) = server.connections
                assert first.transport is not None
                first.transport.abort()  # the server side goes (a restart, a reset)
                lost = time.monotonic()
                await wait_until(
                    lambda: client.connected and first not in server.connections,
                    what="redialed",
                )
                assert time.monotonic() - lost < RECONNECT_INTERVAL_S + 1.0
                assert client.notify("raft", "again") is True
            finally:
                client.close()
            await wait_until(lambda: not server.connections, what="closed")
            await asyncio.sleep(3 * RECONNECT_INTERVAL_S)
            assert not server.connections  # closed: never dialed again

    run(scenario())


def test_a_peer_connection_outlives_the_idle_timeout_and_a_strangers_does_not() -> None:
    """Followers send each other nothing between elections: their connections must
    not idle out; a connection that proved nothing still does."""
    idle_s = 0.3

    async def scenario() -> None:
        limits = ConnectionLimits(idle_timeout_s=idle_s)
        async with serving(peer_auth=MEMBERSHIP, peer_methods=PEER_METHODS, limits=limits) as (
            server,
            handler,
        ):
            client = peer_client(server.address)
            try:
                client.keep_connected()
                await wait_until(lambda: client.connected, what="peer connected")
                (peer_conn,) = server.connections
                host, port = server.address.rsplit(":", 1)
                reader, writer = await asyncio.open_connection(host, int(port))
                await asyncio.sleep(4 * idle_s)
                assert await reader.read() == b""  # the stranger's idled out
                writer.close()
                assert server.connections == {peer_conn}  # the peer's is the same one
                assert client.notify("raft", "still here") is True
                await wait_until(lambda: len(handler.notes) == 1, what="note")
            finally:
                client.close()

    run(scenario())


def test_a_dead_peer_costs_one_connection_attempt_per_reconnect_interval() -> None:
    """A node that refuses the handshake (closes at once): attempts keep coming, at
    most one per RECONNECT_INTERVAL_S (plus the first)."""

    async def scenario() -> None:
        accepted = 0

        def refuse(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1
            writer.close()

        listener = await asyncio.start_server(refuse, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        client = peer_client(f"127.0.0.1:{port}")
        try:
            client.keep_connected()
            window_s = 10 * RECONNECT_INTERVAL_S
            await asyncio.sleep(window_s)
            assert 3 <= accepted <= window_s / RECONNECT_INTERVAL_S + 1, accepted
            assert not client.connected
        finally:
            client.close()
            listener.close()
            await listener.wait_closed()

    run(scenario())


def test_keep_connected_false_leaves_a_lost_connection_down_until_a_message() -> None:
    """A --peers entry that is no longer a member is dialed only to send to it."""

    async def scenario() -> None:
        async with serving(peer_auth=MEMBERSHIP, peer_methods=PEER_METHODS) as (server, _):
            client = peer_client(server.address)
            try:
                client.keep_connected()
                await wait_until(lambda: client.connected, what="connected")
                client.keep_connected(False)
                (conn,) = server.connections
                assert conn.transport is not None
                conn.transport.abort()
                await wait_until(lambda: not client.connected, what="lost")
                await asyncio.sleep(3 * RECONNECT_INTERVAL_S)
                assert not client.connected and not server.connections
                assert client.notify("raft", "x") is False  # dropped; it connects now
                await wait_until(lambda: client.connected, what="dialed for the message")
            finally:
                client.close()

    run(scenario())
