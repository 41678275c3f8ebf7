"""Forged peers against a real 3-node cluster: refused, logged, and nothing they say counts.

The attacker can reach every port (the servers' own, around the proxies) but
does not hold the cluster's secret. It sends every Raft message type claiming
to be a member, with a term far above the cluster's: had any counted, the
target's term would jump (a forged vote or acknowledgement would also make a
leader commit what no majority holds). Each forged connection must be closed
with one log line, the terms must not move, and the clients that run all
along must see a linearizable history.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from typing import Any

import pytest

from kvraft.raft.messages import (
    AppendEntries,
    AppendEntriesReply,
    Entry,
    InstallSnapshot,
    InstallSnapshotReply,
    RequestVote,
    RequestVoteReply,
    TimeoutNow,
)
from kvraft.rpc.codec import Handshake, Notify, Request, decode_envelope, encode_envelope
from kvraft.rpc.framing import FrameDecoder, frame
from kvraft.rpc.peer_auth import CHALLENGE, HELLO, PROOF, WELCOME, Initiator, PeerKey
from kvraft.testing.cluster import Cluster
from kvraft.testing.history import History
from kvraft.testing.linearizability import assert_linearizable
from kvraft.testing.waiting import wait_until
from tests.cluster.kv_support import BackgroundPutters, RecordingClient, find_leader, statuses

pytestmark = pytest.mark.slow

FORGED_TERM_STEP = 1000
CHECK_TIMEOUT_S = 20.0


def forged_messages(src: int, dst: int, term: int) -> list[Any]:
    """One of every Raft message type, from ``src`` to ``dst`` at ``term``."""
    return [
        AppendEntries(
            src=src,
            dst=dst,
            term=term,
            prev_log_index=0,
            prev_log_term=0,
            entries=(Entry(term=term, index=1, command=b"forged"),),
            leader_commit=1,
        ),
        AppendEntriesReply(
            src=src,
            dst=dst,
            term=term,
            success=True,
            match_index=10**6,
            conflict_index=0,
            conflict_term=0,
        ),
        RequestVote(
            src=src, dst=dst, term=term, last_log_index=10**6, last_log_term=term, pre_vote=False
        ),
        RequestVoteReply(src=src, dst=dst, term=term, vote_granted=True, pre_vote=False),
        InstallSnapshot(
            src=src,
            dst=dst,
            term=term,
            last_included_index=10**6,
            last_included_term=term,
            offset=0,
            data=b"forged",
            done=True,
            checksum=zlib.crc32(b"forged"),
        ),
        InstallSnapshotReply(
            src=src, dst=dst, term=term, last_included_index=10**6, next_offset=6, done=True
        ),
        TimeoutNow(src=src, dst=dst, term=term),
    ]


async def send_and_wait_close(address: str, data: bytes, timeout_s: float = 5.0) -> bytes:
    """Write ``data`` on a new connection; what came back before the server closed it."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    received = b""
    try:
        async with asyncio.timeout(timeout_s):
            with contextlib.suppress(ConnectionResetError):
                while chunk := await reader.read(65536):
                    received += chunk
    finally:
        writer.close()
    return received


def refusals(cluster: Cluster, i: int) -> list[str]:
    return [
        line
        for line in cluster.log_tail(i, 2000).splitlines()
        if "closing connection from" in line and "claiming peer" in line
    ]


def terms(cluster: Cluster) -> list[int]:
    return [int(row["term"]) for row in statuses(cluster) if row.get("reachable")]


def test_forged_raft_messages_of_every_type_are_refused(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster(3)
    leader = find_leader(cluster)
    history = History()
    work = BackgroundPutters(cluster, history, batch=3)
    try:
        before = max(terms(cluster))
        forged_term = before + FORGED_TERM_STEP
        sent: dict[int, int] = {0: 0, 1: 0, 2: 0}
        for target in range(3):
            claimed = (
                next(j for j in range(3) if j not in (target, leader))
                if (target != leader)
                else (target + 1) % 3
            )
            for message in forged_messages(claimed, target, forged_term):
                for method, sender in (("raft", f"p{claimed}"), ("raft", "cmallory")):
                    data = frame(encode_envelope(Notify(method, sender, message)))
                    # Around the proxy (the server's own port) and through it.
                    for address in (cluster.private_addresses[target], cluster.address(target)):
                        got = asyncio.run(send_and_wait_close(address, data))
                        assert got == b"", f"{type(message).__name__} to n{target} answered"
                        sent[target] += 1
        for target in range(3):
            wait_until(
                lambda t=target: len(refusals(cluster, t)) >= sent[t],  # type: ignore[misc]
                5.0,
                message=f"n{target} logged every refusal",
            )
            lines = refusals(cluster, target)
            assert len(lines) == sent[target], "one line per forged connection"
            assert all(f"n{target}: closing connection from 127.0.0.1:" in line for line in lines)
            secret = cluster.peer_secret_file.read_bytes().strip().decode()  # type: ignore[union-attr]
            assert secret not in cluster.log_tail(target, 5000)
        # Nothing forged counted: no term came near the forged one.
        assert max(terms(cluster)) < forged_term
        time.sleep(0.5)  # the workload keeps running meanwhile
    finally:
        work.finish()
        assert all(p > 0 for p in work.puts), work.puts
    assert max(terms(cluster)) < forged_term
    assert_linearizable(history, CHECK_TIMEOUT_S)


def _handshake_bytes(address: str, key: PeerKey, claimed: int, target: int) -> bytes:
    """An honest peer handshake to ``target``, recorded: every byte the peer sent."""

    async def run() -> bytes:
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        decoder = FrameDecoder()
        initiator = Initiator(key, claimed, target)

        async def step(name: str) -> Handshake:
            bodies: list[bytes] = []
            while not bodies:
                chunk = await reader.read(65536)
                assert chunk, "closed during an honest handshake"
                bodies = decoder.feed(chunk)
            env = decode_envelope(bodies[0])
            assert isinstance(env, Handshake) and env.step == name, env
            return env

        hello = frame(encode_envelope(Handshake(HELLO, f"p{claimed}", initiator.hello())))
        writer.write(hello)
        challenge = await step(CHALLENGE)
        proof = initiator.proof(challenge.args)
        proof_frame = frame(encode_envelope(Handshake(PROOF, f"p{claimed}", proof)))
        writer.write(proof_frame)
        await step(WELCOME)
        writer.close()
        return hello + proof_frame

    return asyncio.run(run())


def test_a_replayed_peer_handshake_is_refused(make_cluster: Any) -> None:
    """A stream recorded from a member's connection, replayed, proves nothing."""
    cluster: Cluster = make_cluster(3)
    find_leader(cluster)
    assert cluster.peer_secret_file is not None
    key = PeerKey(cluster.peer_secret_file.read_bytes().strip(), cluster.cluster_id)
    target = 0
    recorded = _handshake_bytes(cluster.private_addresses[target], key, 1, target)
    before = max(terms(cluster))
    forged = TimeoutNow(src=1, dst=target, term=before + FORGED_TERM_STEP)
    replay = recorded + frame(encode_envelope(Notify("raft", "p1", forged)))
    answer = asyncio.run(send_and_wait_close(cluster.private_addresses[target], replay))
    (body,) = FrameDecoder().feed(answer)  # the challenge to the replayed hello, then the close
    challenge = decode_envelope(body)
    assert isinstance(challenge, Handshake) and challenge.step == CHALLENGE
    wait_until(
        lambda: any("refused peer proof claiming 'p1'" in line
                    for line in cluster.log_tail(target, 500).splitlines()),
        5.0,
        message="the refused replay logged",
    )  # fmt: skip
    assert max(terms(cluster)) < before + FORGED_TERM_STEP
    history = History()
    client = RecordingClient(cluster, history)
    try:
        assert client.put("after-replay", "v", 0) == 1
    finally:
        client.close()
    assert_linearizable(history, CHECK_TIMEOUT_S)


def test_a_request_claiming_a_peer_is_refused_and_clients_still_served(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster(3)
    find_leader(cluster)
    data = frame(encode_envelope(Request(1, "status", "p1", None)))
    assert asyncio.run(send_and_wait_close(cluster.private_addresses[2], data)) == b""
    history = History()
    client = RecordingClient(cluster, history)
    try:
        assert client.put("k", "v", 0) == 1
        assert client.get("k") == ("v", 1)
    finally:
        client.close()
    assert_linearizable(history, CHECK_TIMEOUT_S)


def test_insecure_peers_warns_at_start(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster(1, insecure_peers=True)
    wait_until(
        lambda: "--insecure-peers: peers are not authenticated" in cluster.log_tail(0),
        10.0,
        message="the warning at start",
    )
    assert "WARNING" in next(
        line for line in cluster.log_tail(0).splitlines() if "are not authenticated" in line
    )
