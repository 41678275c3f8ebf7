"""Peer identity on the wire: only a connection that ran the peer handshake speaks for a peer.

Real RpcServers on loopback; the forgers write raw frames on plain sockets,
so nothing of the client's side helps them.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from typing import Any

import pytest
from rpc_support import read_until_closed, run, serving, wait_until

from kvraft.errors import ConnectFailed
from kvraft.raft.messages import (
    AppendEntries,
    AppendEntriesReply,
    Entry,
    InstallSnapshot,
    RequestVote,
    RequestVoteReply,
    TimeoutNow,
)
from kvraft.rpc.client import RpcClient
from kvraft.rpc.codec import Handshake, Notify, Request, decode_envelope, encode_envelope
from kvraft.rpc.framing import FrameDecoder, frame
from kvraft.rpc.peer_auth import CHALLENGE, HELLO, PROOF, WELCOME, Initiator, Membership, PeerKey

KEY = PeerKey(b"rpc-identity-test-secret-0123", "idtest")
MEMBERSHIP = Membership(KEY, 0, frozenset({1, 2}))
PEER_METHODS = frozenset({"raft"})

FORGED: list[Any] = [
    AppendEntriesReply(
        src=1, dst=0, term=9, success=True, match_index=50, conflict_index=0, conflict_term=0
    ),
    RequestVoteReply(src=1, dst=0, term=9, vote_granted=True, pre_vote=False),
    AppendEntries(
        src=1,
        dst=0,
        term=9,
        prev_log_index=0,
        prev_log_term=0,
        entries=(Entry(term=9, index=1, command=b"junk"),),
        leader_commit=1,
    ),
    RequestVote(src=1, dst=0, term=9, last_log_index=99, last_log_term=9, pre_vote=False),
    InstallSnapshot(
        src=1,
        dst=0,
        term=9,
        last_included_index=5,
        last_included_term=9,
        offset=0,
        data=b"x",
        done=True,
        checksum=zlib.crc32(b"x"),
    ),
    TimeoutNow(src=1, dst=0, term=9),
]


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "closing connection from" in r.getMessage()]


async def send_raw(address: str, data: bytes) -> bytes:
    """Write ``data`` on a fresh connection; everything the server sent until it closed."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    try:
        return await read_until_closed(reader)
    finally:
        writer.close()


@pytest.mark.parametrize("message", FORGED, ids=lambda m: type(m).__name__)
def test_forged_raft_message_without_handshake_closes_the_connection(
    message: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A Raft message claiming p1 on an unauthenticated connection never reaches the handler."""
    caplog.set_level(logging.WARNING, logger="kvraft.rpc")

    async def scenario() -> None:
        async with serving(peer_auth=MEMBERSHIP, peer_methods=PEER_METHODS) as (server, handler):
            forged = frame(encode_envelope(Notify("raft", "p1", message)))
            echo = frame(encode_envelope(Request(1, "echo", "cmallory", "after")))
            assert await send_raw(server.address, forged + echo) == b""  # closed, no reply
            assert handler.notes == [] and handler.calls == 0

    run(scenario())
    (line,) = refusals(caplog)  # once per connection
    assert "test: closing connection from 127.0.0.1:" in line
    assert "'p1'" in line and "did not authenticate" in line
    assert KEY.secret.decode() not in caplog.text


@pytest.mark.parametrize(
    ("method", "sender"),
    [("raft", "cmallory"), ("echo", "p1"), ("raft", "p07")],
)
def test_any_peer_claim_without_handshake_is_refused(method: str, sender: str) -> None:
    """A peer sender on any method, or the peers' method under any sender, closes the connection."""

    async def scenario() -> None:
        async with serving(peer_auth=MEMBERSHIP, peer_methods=PEER_METHODS) as (server, handler):
            data = frame(encode_envelope(Request(1, method, sender, FORGED[0])))
            data += frame(encode_envelope(Notify(method, sender, FORGED[0])))
            assert await send_raw(server.address, data) == b""
            assert handler.notes == [] and handler.calls == 0

    run(scenario())


def test_clients_need_no_handshake() -> None:
    async def scenario() -> None:
        async with serving(peer_auth=MEMBERSHIP, peer_methods=PEER_METHODS) as (server, _):
            client = RpcClient(server.address, "cab12")
            try:
                assert await client.call("peer_id", None, timeout=5) is None
                assert await client.call("echo", "hi", timeout=5) == "hi"
            finally:
                client.close()

    run(scenario())


def test_authenticated_peer_is_handed_to_the_handler_by_its_proven_id() -> None:
    async def scenario() -> None:
        async with serving(peer_auth=MEMBERSHIP, peer_methods=PEER_METHODS) as (server, handler):
            peer = RpcClient(server.address, "p1", peer_key=KEY, server_peer_id=0)
            try:
                assert await peer.call("peer_id", None, timeout=5) == 1
                assert peer.notify("raft", FORGED[0])
                await wait_until(lambda: len(handler.notes) == 1, what="the notify")
                assert handler.note_peers == [1]
            finally:
                peer.close()

    run(scenario())


def test_authenticated_peer_cannot_speak_for_another(caplog: pytest.LogCaptureFixture) -> None:
    """A member proven as p1 that sends as p2 is refused: the sender must be its proven one."""
    caplog.set_level(logging.WARNING, logger="kvraft.rpc")

    async def scenario() -> None:
        async with serving(peer_auth=MEMBERSHIP, peer_methods=PEER_METHODS) as (server, handler):
            reader, writer, _ = await raw_handshake(server.address, 1)
            writer.write(frame(encode_envelope(Notify("raft", "p1", FORGED[0]))))
            writer.write(frame(encode_envelope(Notify("raft", "p2", FORGED[0]))))
            try:
                assert await read_until_closed(reader) == b""
            finally:
                writer.close()
            # Its own frame counted as p1's; the one claiming p2 closed the connection.
            assert [n[1] for n in handler.notes] == ["p1"] and handler.note_peers == [1]

    run(scenario())
    assert any("authenticated as p1" in line for line in refusals(caplog))


def test_peer_with_a_wrong_secret_cannot_connect(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kvraft.rpc")
    wrong = PeerKey(b"not-the-cluster-secret-012345", "idtest")

    async def scenario() -> None:
        async with serving(peer_auth=MEMBERSHIP, peer_methods=PEER_METHODS) as (server, handler):
            peer = RpcClient(server.address, "p1", peer_key=wrong, server_peer_id=0)
            try:
                with pytest.raises(ConnectFailed, match="peer handshake failed"):
                    await peer.call("echo", 1, timeout=5)
                with pytest.raises(ConnectFailed, match="peer handshake failed"):
                    await peer.call("echo", 2, timeout=5)
                assert not peer.notify("raft", FORGED[0])
                assert handler.calls == 0 and handler.notes == []
            finally:
                peer.close()

    run(scenario())
    # The server's MAC fails the client's check first; the client hangs up and
    # says why, once for its two failed attempts.
    warnings = [r.getMessage() for r in caplog.records if "peer handshake failed" in r.getMessage()]
    assert len(warnings) == 1 and "n0 did not prove the cluster's secret" in warnings[0]
    assert wrong.secret.decode() not in caplog.text and KEY.secret.decode() not in caplog.text


def test_server_without_membership_refuses_every_peer() -> None:
    """No secret and not insecure: no connection can become a peer's."""

    async def scenario() -> None:
        async with serving(peer_methods=PEER_METHODS) as (server, handler):
            peer = RpcClient(server.address, "p1", peer_key=KEY, server_peer_id=0)
            try:
                with pytest.raises(ConnectFailed):
                    await peer.call("echo", 1, timeout=5)
            finally:
                peer.close()
            data = frame(encode_envelope(Notify("raft", "p1", FORGED[0])))
            assert await send_raw(server.address, data) == b""
            assert handler.notes == []

    run(scenario())


def test_insecure_server_believes_the_sender() -> None:
    """``insecure_peers`` (``--insecure-peers``): the claim is taken as it comes."""

    async def scenario() -> None:
        async with serving(insecure_peers=True, peer_methods=PEER_METHODS) as (server, handler):
            peer = RpcClient(server.address, "p2")
            try:
                assert peer.notify("raft", FORGED[0]) or await _connected(peer)
                await wait_until(lambda: len(handler.notes) >= 1, what="the notify")
                assert handler.note_peers[0] == 2
            finally:
                peer.close()

    run(scenario())


async def _connected(peer: RpcClient) -> bool:
    await wait_until(lambda: peer.connected, what="connected")
    return peer.notify("raft", FORGED[0])


# ------------------------------------------------------------------- raw peers


async def raw_handshake(
    address: str, peer_id: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """An honest handshake on a raw socket: the open stream and every byte sent on it."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    decoder = FrameDecoder()
    initiator = Initiator(KEY, peer_id, 0)

    async def next_step(step: str) -> Handshake:
        bodies: list[bytes] = []
        while not bodies:
            bodies = decoder.feed(await reader.read(65536))
        env = decode_envelope(bodies[0])
        assert isinstance(env, Handshake) and env.step == step, env
        return env

    hello = frame(encode_envelope(Handshake(HELLO, f"p{peer_id}", initiator.hello())))
    writer.write(hello)
    challenge = await next_step(CHALLENGE)
    proof_args = initiator.proof(challenge.args)
    proof = frame(encode_envelope(Handshake(PROOF, f"p{peer_id}", proof_args)))
    writer.write(proof)
    await next_step(WELCOME)
    return reader, writer, hello + proof


def test_a_replayed_handshake_stream_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    """Bytes recorded from an honest peer's connection, replayed verbatim, speak for no one."""
    caplog.set_level(logging.WARNING, logger="kvraft.rpc")

    async def scenario() -> None:
        async with serving(peer_auth=MEMBERSHIP, peer_methods=PEER_METHODS) as (server, handler):
            _, writer, recorded = await raw_handshake(server.address, 1)
            writer.close()
            recorded += frame(encode_envelope(Notify("raft", "p1", FORGED[0])))
            answer = await send_raw(server.address, recorded)
            # Only the challenge to the replayed hello came back, then the close.
            (body,) = FrameDecoder().feed(answer)
            challenge = decode_envelope(body)
            assert isinstance(challenge, Handshake) and challenge.step == CHALLENGE
            assert handler.notes == []

    run(scenario())
    assert any("refused peer proof claiming 'p1'" in line for line in refusals(caplog))
