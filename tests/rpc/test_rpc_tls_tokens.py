"""Client TLS, peer mutual TLS and client tokens on real RpcServers and RpcClients on loopback.

Certificates come from ``deploy/make-certs.sh`` (the session's ``certs``, and
``stranger_certs`` for an outsider). Token forgers write raw frames on plain
sockets, so nothing of the client's side helps them.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from contextlib import closing
from typing import Any

import pytest
from rpc_support import ScriptedHandler, client_of, read_until_closed, run, serving, wait_until
from tests.support.certs import CertSet

from kvraft.errors import ConnectFailed, ConnectionLost, Unauthorized
from kvraft.rpc.client import RpcClient
from kvraft.rpc.codec import Handshake, Notify, Request, decode_envelope, encode_envelope
from kvraft.rpc.framing import FrameDecoder, frame
from kvraft.rpc.peer_auth import HELLO, NONCE_BYTES, VERSION, Membership, PeerKey
from kvraft.rpc.server import RpcServer
from kvraft.rpc.tls import (
    ServerTls,
    TlsFiles,
    client_tls_context,
    load_server_tls,
    peer_dial_context,
)
from kvraft.rpc.tokens import TOKEN_STEP, Role, parse_token_file

CLUSTER = "tlstest"
SECRET_KEY = PeerKey(b"tls-tokens-test-secret-0123456", CLUSTER)
VOUCHED_KEY = PeerKey(None, CLUSTER)
PEER_METHODS = frozenset({"raft"})
READ_T, WRITE_T, ADMIN_T = "read-token-01234567", "write-token-0123456", "admin-token-0123456"
UNKNOWN_T = "unknown-token-0123456789"
TOKENS = parse_token_file(
    f"{READ_T} read\n{WRITE_T} readwrite\n{ADMIN_T} admin\n",
    {"get": Role.READ, "put": Role.READWRITE},
)


def kv_handler() -> tuple[ScriptedHandler, list[str]]:
    """A handler serving ``get``, ``put`` and ``status``; the list of what ran, in order."""
    handler, ran = ScriptedHandler(), []
    for method in ("get", "put", "status"):

        async def serve(args: Any, method: str = method) -> Any:
            ran.append(method)
            return (method, args)

        handler.extra[method] = serve
    return handler, ran


def server_tls(files: TlsFiles, has_peer_secret: bool = False) -> ServerTls:
    tls = load_server_tls(files, has_peer_secret=has_peer_secret)
    assert tls is not None
    return tls


def port_tls(certs: CertSet) -> ServerTls:
    """TLS on the port only: no client or peer certificates asked for."""
    return server_tls(TlsFiles(cert_file=certs.node_cert(0), key_file=certs.node_key(0)))


def peer_files(certs: CertSet, i: int, **extra: Any) -> TlsFiles:
    """Node ``i``'s flags with peer TLS (its node certificate for both)."""
    cert, key = certs.node_cert(i), certs.node_key(i)
    return TlsFiles(
        cert, key, peer_cert_file=cert, peer_key_file=key, peer_trusted_ca_file=certs.ca, **extra
    )


def peer_client(
    address: str, certs: CertSet, key: PeerKey = VOUCHED_KEY, sender: str = "p1", **kw: Any
) -> RpcClient:
    """Node 1's client to node 0 (by default), dialing as a node does."""
    dial = peer_dial_context(peer_files(certs, 1))
    assert dial is not None
    context, name = dial
    kw.setdefault("server_peer_id", 0)
    return RpcClient(address, sender, peer_key=key, ssl=context, server_hostname=name, **kw)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ------------------------------------------------------------------------ TLS


def test_a_call_over_tls_succeeds(certs: CertSet, loop_kind: str) -> None:
    async def scenario() -> None:
        async with serving(tls=port_tls(certs)) as (server, _):
            async with client_of(server.address, ssl=client_tls_context(cacert=certs.ca)) as c:
                assert await c.call("echo", "over tls", timeout=5) == "over tls"
                (conn,) = server.connections
                assert conn.transport is not None
                assert conn.transport.get_extra_info("ssl_object") is not None
                assert not conn.tls_peer
            context = client_tls_context(cacert=certs.ca)
            async with client_of(server.address, ssl=context, server_hostname="localhost") as c:
                assert await c.call("echo", "by name", timeout=5) == "by name"

    run(scenario(), loop=loop_kind)


def test_a_client_trusting_another_ca_cannot_connect(
    certs: CertSet, stranger_certs: CertSet, loop_kind: str
) -> None:
    async def scenario() -> None:
        async with serving(tls=port_tls(certs)) as (server, handler):
            context = client_tls_context(cacert=stranger_certs.ca)
            async with client_of(server.address, ssl=context) as client:
                with pytest.raises(ConnectFailed, match="certificate verify failed"):
                    await client.call("echo", 1, timeout=5)
            assert handler.calls == 0

    run(scenario(), loop=loop_kind)


@pytest.mark.parametrize("token", [None, READ_T], ids=["no-token", "token"])
def test_a_plaintext_client_of_a_tls_server_is_told_why(
    certs: CertSet, loop_kind: str, token: str | None
) -> None:
    async def scenario() -> None:
        async with serving(tls=port_tls(certs)) as (server, handler):
            async with client_of(server.address, token=token) as client:
                with pytest.raises(ConnectionLost, match=r"\(a TLS server\? "):
                    await client.call("echo", 1, timeout=5)
            assert handler.calls == 0

    run(scenario(), loop=loop_kind)


def test_client_cert_auth_needs_a_client_certificate(certs: CertSet) -> None:
    tls = server_tls(peer_files(certs, 0, trusted_ca_file=certs.client_ca, client_cert_auth=True))

    async def scenario() -> None:
        async with serving(tls=tls) as (server, handler):
            async with client_of(server.address, ssl=client_tls_context(certs.ca)) as client:
                # TLS 1.3: the client finishes its handshake before the server checks it.
                with pytest.raises(ConnectionLost):
                    await client.call("echo", 1, timeout=5)
            assert handler.calls == 0
            context = client_tls_context(certs.ca, certs.client_cert, certs.client_key)
            async with client_of(server.address, ssl=context) as client:
                assert await client.call("echo", 2, timeout=5) == 2
                assert await client.call("peer_id", None, timeout=5) is None

    run(scenario())


# ------------------------------------------------------------------- peer mTLS


def peer_server(tls: ServerTls, key: PeerKey = VOUCHED_KEY, **kwargs: Any) -> Any:
    """Node 0 of members 0, 1, 2 taking peers by ``key``, on ``tls``."""
    membership = Membership(key, 0, frozenset({1, 2}))
    return serving(tls=tls, peer_auth=membership, peer_methods=PEER_METHODS, **kwargs)


def test_a_tls_vouched_peer_authenticates_by_its_certificate(certs: CertSet) -> None:
    tls = server_tls(peer_files(certs, 0, trusted_ca_file=certs.client_ca))

    async def scenario() -> None:
        # With tokens too: an authenticated peer is never asked for one.
        async with peer_server(tls, tokens=TOKENS) as (server, handler):
            with closing(peer_client(server.address, certs)) as peer:
                assert await peer.call("peer_id", None, timeout=5) == 1
                assert peer.notify("raft", "append")
                await wait_until(lambda: len(handler.notes) == 1, what="the notify")
                assert handler.notes == [("raft", "p1", "append")]
                assert handler.note_peers == [1]
                (conn,) = server.connections
                assert conn.tls_peer and conn.peer_id == 1

    run(scenario())


@pytest.mark.parametrize(
    ("key", "sender", "server_peer_id", "why"),
    [
        (PeerKey(None, "other-cluster"), "p1", 0, "for cluster 'other-cluster'"),
        (VOUCHED_KEY, "p7", 0, "p7 is not a peer of n0"),
        (VOUCHED_KEY, "p1", 2, "addressed to n2"),
    ],
    ids=["other-cluster", "not-a-member", "other-node"],
)
def test_a_peer_certificate_vouches_only_for_a_member_of_this_cluster(
    key: PeerKey, sender: str, server_peer_id: int, why: str, certs: CertSet, rpc_log: Any
) -> None:
    async def scenario() -> None:
        async with peer_server(server_tls(peer_files(certs, 0))) as (server, handler):
            peer = peer_client(server.address, certs, key, sender, server_peer_id=server_peer_id)
            with closing(peer), pytest.raises(ConnectFailed, match="peer handshake failed"):
                await peer.call("echo", 1, timeout=5)
            assert handler.calls == 0 and handler.notes == []

    run(scenario())
    assert any(why in line for line in warnings_of(rpc_log)), warnings_of(rpc_log)


def test_a_vouched_hello_must_come_from_the_peer_it_claims(certs: CertSet, rpc_log: Any) -> None:
    async def scenario() -> None:
        async with peer_server(server_tls(peer_files(certs, 0))) as (server, handler):
            dial = peer_dial_context(peer_files(certs, 1))
            assert dial is not None
            args = (VERSION, CLUSTER, 1, 0, b"n" * NONCE_BYTES)
            hello = frame(encode_envelope(Handshake(HELLO, "p2", args)))
            raft = frame(encode_envelope(Notify("raft", "p2", "append")))
            got = await raw_envelopes(
                server.address, hello + raft, ssl=dial[0], server_hostname=dial[1]
            )
            assert got == [] and handler.notes == []  # no welcome: closed at the hello

    run(scenario())
    assert any("hello from 'p2' claims p1" in w for w in warnings_of(rpc_log))


def stranger_dialer(certs: CertSet, stranger_certs: CertSet) -> ssl.SSLContext:
    """A stranger's node certificate, trusting the cluster's CA (so only the server refuses)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(certs.ca)
    context.load_cert_chain(stranger_certs.node_cert(1), stranger_certs.node_key(1))
    return context


@pytest.mark.parametrize("presented", ["client-certificate", "no-certificate", "stranger"])
def test_only_a_peer_certificate_makes_a_peer(
    presented: str, certs: CertSet, stranger_certs: CertSet, rpc_log: Any
) -> None:
    tls = server_tls(peer_files(certs, 0, trusted_ca_file=certs.client_ca))
    if presented == "client-certificate":  # one the server trusts, for clients
        context = client_tls_context(certs.ca, certs.client_cert, certs.client_key)
    elif presented == "no-certificate":
        context = client_tls_context(certs.ca)
    else:
        context = stranger_dialer(certs, stranger_certs)

    async def scenario() -> None:
        async with peer_server(tls) as (server, handler):
            peer = RpcClient(
                server.address, "p1", peer_key=VOUCHED_KEY, server_peer_id=0, ssl=context
            )
            with closing(peer):
                for _ in range(2):
                    with pytest.raises(ConnectFailed, match="peer handshake failed"):
                        await peer.call("peer_id", None, timeout=5)
                assert not peer.notify("raft", "append")
            assert handler.calls == 0 and handler.notes == [] and handler.note_peers == []

    run(scenario())
    if presented != "stranger":  # the TLS handshake itself fails the stranger
        assert any("without a peer certificate" in w for w in warnings_of(rpc_log))


def test_with_a_secret_and_peer_tls_the_secret_alone_is_not_enough(
    certs: CertSet, rpc_log: Any
) -> None:
    tls = server_tls(peer_files(certs, 0), has_peer_secret=True)

    async def scenario() -> None:
        async with peer_server(tls, SECRET_KEY) as (server, handler):
            no_cert = RpcClient(
                server.address, "p1", peer_key=SECRET_KEY, server_peer_id=0,
                ssl=client_tls_context(certs.ca),
            )  # fmt: skip
            with closing(no_cert), pytest.raises(ConnectFailed, match="peer handshake failed"):
                await no_cert.call("peer_id", None, timeout=5)
            assert handler.calls == 0
            # The same secret with a node's certificate: both checks pass.
            with closing(peer_client(server.address, certs, SECRET_KEY)) as peer:
                assert await peer.call("peer_id", None, timeout=5) == 1

    run(scenario())
    assert any("without a peer certificate" in w for w in warnings_of(rpc_log))
    assert SECRET_KEY.secret is not None and SECRET_KEY.secret.decode() not in rpc_log.text


def test_a_tls_vouched_key_needs_peer_tls(certs: CertSet) -> None:
    membership = Membership(VOUCHED_KEY, 0, frozenset({1}))
    same_ca = peer_files(certs, 0, trusted_ca_file=certs.ca)  # peers told apart by a secret
    for tls in (None, port_tls(certs), server_tls(same_ca, has_peer_secret=True)):
        with pytest.raises(ValueError, match="needs peer TLS"):
            RpcServer(ScriptedHandler(), peer_auth=membership, tls=tls)
    RpcServer(ScriptedHandler(), peer_auth=membership, tls=server_tls(peer_files(certs, 0)))
    with pytest.raises(ValueError, match="needs an ssl context"):
        RpcClient("127.0.0.1:1", "p1", peer_key=VOUCHED_KEY, server_peer_id=0)


# --------------------------------------------------------------------- tokens


def test_without_a_token_nothing_runs() -> None:
    async def scenario() -> None:
        handler, ran = kv_handler()
        async with serving(handler, tokens=TOKENS) as (server, _):
            async with client_of(server.address) as client:
                for method in ("get", "put", "status", "echo"):
                    with pytest.raises(Unauthorized, match="requires a token and was given no"):
                        await client.call(method, "k", timeout=5)
            assert ran == [] and handler.calls == 0

    run(scenario())


def test_an_unknown_token_is_refused_at_connect(rpc_log: Any) -> None:
    async def scenario() -> None:
        handler, ran = kv_handler()
        async with serving(handler, tokens=TOKENS) as (server, _):
            async with client_of(server.address, token=UNKNOWN_T) as client:
                for _ in range(2):  # each new connection is refused again
                    with pytest.raises(Unauthorized, match="refused this client's token"):
                        await client.call("get", "k", timeout=5)
            assert ran == [] and handler.calls == 0

    run(scenario())
    refused = [w for w in warnings_of(rpc_log) if "refused a token from 127.0.0.1:" in w]
    assert len(refused) == 2
    assert UNKNOWN_T not in rpc_log.text


@pytest.mark.parametrize(
    ("token", "role", "allowed"),
    [
        (READ_T, "read", {"get"}),
        (WRITE_T, "readwrite", {"get", "put"}),
        (ADMIN_T, "admin", {"get", "put", "status", "echo"}),
    ],
    ids=["read", "readwrite", "admin"],
)
def test_a_role_allows_its_methods_only(token: str, role: str, allowed: set[str]) -> None:
    async def scenario() -> None:
        handler, ran = kv_handler()
        async with serving(handler, tokens=TOKENS) as (server, _):
            async with client_of(server.address, token=token) as client:
                for method in ("get", "put", "status", "echo"):
                    if method in allowed:
                        expected = "k" if method == "echo" else (method, "k")
                        assert await client.call(method, "k", timeout=5) == expected
                    else:
                        need = "readwrite" if method == "put" else "admin"
                        message = f"{method} needs the {need} role; this token has {role}"
                        with pytest.raises(Unauthorized, match=message):
                            await client.call(method, "k", timeout=5)
                assert client.connected  # a refused call keeps the connection
            assert set(ran) == allowed - {"echo"}
            assert handler.calls == len(allowed)

    run(scenario())


def test_a_server_without_tokens_takes_a_client_that_presents_one() -> None:
    async def scenario() -> None:
        handler, ran = kv_handler()
        async with serving(handler) as (server, _):
            async with client_of(server.address, token=READ_T) as client:
                assert await client.call("put", "k", timeout=5) == ("put", "k")
                assert await client.call("status", None, timeout=5) == ("status", None)
            assert ran == ["put", "status"]
            # Its answer to the token: the role every caller has there.
            answer = await raw_envelopes(server.address, token_frame(UNKNOWN_T), 1)
            assert answer == [Handshake(TOKEN_STEP, "test", "admin")]

    run(scenario())


async def raw_envelopes(address: str, data: bytes, count: int = 0, **kw: Any) -> list[Any]:
    """Write ``data`` on a fresh connection; the first ``count`` envelopes the server sends
    (with 0, all it sends until it closes the connection). ``kw``: TLS options."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), **kw)
    writer.write(data)
    decoder, envs = FrameDecoder(), list[Any]()
    try:
        if not count:
            return [decode_envelope(b) for b in decoder.feed(await read_until_closed(reader))]
        async with asyncio.timeout(5):
            while len(envs) < count:
                chunk = await reader.read(65536)
                assert chunk, f"closed after {envs}"
                envs += [decode_envelope(body) for body in decoder.feed(chunk)]
        return envs
    finally:
        writer.close()


def token_frame(token: Any) -> bytes:
    return frame(encode_envelope(Handshake(TOKEN_STEP, "cmallory", token)))


def test_a_second_token_closes_the_connection(rpc_log: Any) -> None:
    async def scenario() -> None:
        handler, ran = kv_handler()
        async with serving(handler, tokens=TOKENS) as (server, _):
            put = frame(encode_envelope(Request(1, "put", "cmallory", "k")))
            sent = token_frame(READ_T) + token_frame(ADMIN_T) + put
            # The first token's answer (its role), then the close: the put never ran.
            assert await raw_envelopes(server.address, sent) == [
                Handshake(TOKEN_STEP, "test", "read")
            ]
            assert ran == [] and handler.calls == 0

    run(scenario())
    (line,) = [w for w in warnings_of(rpc_log) if "closing connection from" in w]
    assert "a second token on one connection" in line
    assert READ_T not in rpc_log.text and ADMIN_T not in rpc_log.text


@pytest.mark.parametrize(
    "token", [UNKNOWN_T, 42, None, "x" * 100_000], ids=["unknown", "int", "none", "oversize"]
)
def test_a_refused_token_is_answered_with_none(token: Any) -> None:
    """The answer says refused; the connection stays, and its requests are Unauthorized."""

    async def scenario() -> None:
        handler, ran = kv_handler()
        async with serving(handler, tokens=TOKENS) as (server, _):
            get = frame(encode_envelope(Request(1, "get", "cmallory", "k")))
            envs = await raw_envelopes(server.address, token_frame(token) + get, 2)
            assert envs[0] == Handshake(TOKEN_STEP, "test", None)
            assert envs[1].error[0] == "Unauthorized" and "does not know" in envs[1].error[1]
            assert ran == []

    run(scenario())


def test_an_authenticated_peer_is_not_asked_for_a_token() -> None:
    membership = Membership(SECRET_KEY, 0, frozenset({1, 2}))

    async def scenario() -> None:
        handler, ran = kv_handler()
        kwargs = {"peer_auth": membership, "peer_methods": PEER_METHODS, "tokens": TOKENS}
        async with serving(handler, **kwargs) as (server, _):
            peer = RpcClient(server.address, "p1", peer_key=SECRET_KEY, server_peer_id=0)
            with closing(peer):
                assert await peer.call("status", None, timeout=5) == ("status", None)
                assert await peer.call("peer_id", None, timeout=5) == 1
                assert peer.notify("raft", "append")
                await wait_until(lambda: handler.note_peers == [1], what="the peer's notify")
            # The same server still asks everyone else for one.
            async with client_of(server.address) as client:
                with pytest.raises(Unauthorized):
                    await client.call("status", None, timeout=5)
            assert ran == ["status"]

    run(scenario())
