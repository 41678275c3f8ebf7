"""The client's contract against a live cluster: races, Maybe, bad input, memory per client."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

from kvraft.client.async_client import MAX_LEARNED_SERVERS, AsyncClient
from kvraft.client.client import Client
from kvraft.errors import (
    InvalidArgument,
    Maybe,
    NoKey,
    RemoteError,
    RpcError,
    Unavailable,
    VersionMismatch,
    WrongLeader,
)
from kvraft.kv_protocol import NotLeaderResult, PutOk, PutOp, VersionMismatchResult
from kvraft.rpc.client import RpcClient
from kvraft.rpc.codec import client_sender
from kvraft.rpc.server import RpcServer
from kvraft.testing.history import History
from kvraft.testing.linearizability import assert_linearizable
from kvraft.testing.waiting import wait_until

from ..cluster.kv_support import RecordingClient, run_threads, statuses

pytestmark = pytest.mark.slow


def test_racing_puts_one_winner_per_version(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Many clients put one key at the same version: exactly one wins each version."""
    cluster = make_cluster(3)
    history = History()
    clients = [RecordingClient(cluster, history) for _ in range(8)]
    winners: dict[int, list[str]] = {}
    maybes: dict[int, list[str]] = {}
    mutex = threading.Lock()

    def race(c: RecordingClient) -> None:
        for version in range(5):
            barrier.wait(timeout=60)
            try:
                c.put("race", c.id, version)
                with mutex:
                    winners.setdefault(version, []).append(c.id)
            except (VersionMismatch, NoKey):
                pass
            except Maybe:
                with mutex:
                    maybes.setdefault(version, []).append(c.id)
            barrier.wait(timeout=60)
            if c is clients[0]:
                # Resolve every Maybe of this round by reading who won it.
                value, got = c.get("race")
                assert got == version + 1
                for cid in maybes.get(version, []):
                    if value == cid:
                        winners.setdefault(version, []).append(cid)
            barrier.wait(timeout=60)

    barrier = threading.Barrier(len(clients))
    try:
        run_threads([lambda c=c: race(c) for c in clients])
        assert sorted(winners) == list(range(5))
        assert all(len(w) == 1 for w in winners.values()), winners
        value, version = clients[0].get("race")
        assert (value, version) == (winners[4][0], 5)
    finally:
        for c in clients:
            c.close()
    assert_linearizable(history, 20)


def test_resent_puts_on_a_lossy_network_get_their_first_result_not_maybe(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """On the lossy network half the replies are lost and puts are resent; the session
    answers each resend with its first result, so no put after a session's first one
    raises Maybe (nor VersionMismatch: this client is the only writer).

    Before sessions this network made resent puts meet VersionMismatch (Maybe) within a
    few dozen puts. The log holding more commands than the client made operations shows
    the resends happened (and were applied once); the linearizability check proves
    every answer right. The Maybe that remains (a forgotten session) is checked in
    test_client_sessions.py.

    Reference: Raft thesis §6.3
    """
    cluster = make_cluster(3, network="lossy")
    history = History()
    c = RecordingClient(cluster, history, call_timeout_s=0.2)
    puts = 40
    try:
        try:
            version = c.put("k", "v0", 0)
        except Maybe:  # a session's first request keeps the old rule
            _value, version = c.get("k")
        for i in range(1, puts):
            version = c.put("k", f"v{i}", version)
    finally:
        c.close()
    assert version >= puts
    assert_linearizable(history, 20)
    status = statuses(cluster)
    commands = max(r["last_index"] for r in status) - max(r["term"] for r in status)
    assert commands > puts + 1, f"no resend reached the log ({commands} commands)"


def test_first_send_answers_never_raise_maybe(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """A put that surely did not apply before (NotLeader) reports VersionMismatch, not Maybe.

    Each fresh client starts at a different server, so some first try a
    follower, which answers NotLeader without submitting anything.
    """
    cluster = make_cluster(3)
    with Client(cluster.addresses, deadline=20) as c:
        assert c.put("k", "a", 0) == 1
    for first in range(3):
        servers = cluster.addresses[first:] + cluster.addresses[:first]
        with Client(servers, deadline=20) as c:
            with pytest.raises(VersionMismatch) as err:
                c.put("k", "b", 0)
            assert not isinstance(err.value, Maybe)
            with pytest.raises(NoKey):
                c.put("missing", "b", 3)


@pytest.mark.parametrize(
    ("key", "value", "version"),
    [
        (1, "v", 0),
        ("k", 2, 0),
        ("k", "v", -1),
        ("k", "v", 1.5),
        ("k", "v", True),
        ("k", "x" * (1024 * 1024 + 1), 0),
    ],
)
def test_client_refuses_bad_input_before_sending(
    key: object, value: object, version: object
) -> None:
    """Bad keys, values and versions raise InvalidArgument locally; nothing is sent."""
    c = Client(["127.0.0.1:9"], deadline=0.5)  # port 9: nothing listens; sending would hang
    try:
        with pytest.raises(InvalidArgument):
            c.put(key, value, version)  # type: ignore[arg-type]
        if not isinstance(key, str):
            with pytest.raises(InvalidArgument):
                c.get(key)  # type: ignore[arg-type]
    finally:
        c.close()


def test_server_refuses_bad_operations_and_applies_nothing(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Ill-typed or oversize operations over the wire get an error; the log does not grow."""
    cluster = make_cluster(3, server_args=["--max-value-bytes", "1000"])
    with Client(cluster.addresses, deadline=20) as c:
        c.put("k", "v", 0)

    def last_indexes() -> dict[int, int]:
        return {r["id"]: r["last_index"] for r in statuses(cluster)}

    # The put returned once a majority had it: wait for the third node too,
    # or its catching up would look like a bad operation growing the log.
    wait_until(lambda: len(set(last_indexes().values())) == 1, 20, message="logs equal")
    before = last_indexes()

    async def send_bad() -> list[str]:
        codes = []
        for address in cluster.addresses:
            rpc = RpcClient(address, client_sender("bad"))
            for args in [
                PutOp("k", "v", -1, "bad", 1, 1),
                PutOp("k", "x" * 2000, 1, "bad", 2, 2),
                ("k", "v", 1),
                None,
            ]:
                with pytest.raises((RemoteError, InvalidArgument)) as err:
                    await rpc.call("put", args, 5)
                codes.append(type(err.value).__name__)
            rpc.close()
        return codes

    codes = asyncio.run(send_bad())
    assert codes and all(code in ("RemoteError", "InvalidArgument") for code in codes)
    after = {r["id"]: r["last_index"] for r in statuses(cluster)}
    assert after == before
    with Client(cluster.addresses, deadline=20) as c:
        assert c.get("k") == ("v", 1)


def test_undecodable_log_entry_is_skipped_by_every_server(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """A raw submit of junk is committed, skipped by all replicas alike, and the service goes on."""
    cluster = make_cluster(3)
    with Client(cluster.addresses, deadline=20) as c:
        c.put("k", "v", 0)

        async def submit_junk() -> None:
            for address in cluster.private_addresses:
                rpc = RpcClient(address, client_sender("tester"))
                result = await rpc.call("raft.submit", b"\xc1 not a command", 2)
                rpc.close()
                if result is not None:
                    return
            raise AssertionError("no leader took the raw submit")

        asyncio.run(submit_junk())
        assert c.put("k", "v2", 1) == 2
        wait_until(
            lambda: (
                len({(r["applied_index"], r["skipped_commands"]) for r in statuses(cluster)}) == 1
            ),
            10,
            message="all replicas applied the same entries and skipped the junk",
        )
        assert {r["skipped_commands"] for r in statuses(cluster)} == {1}
        assert c.get("k") == ("v2", 2)


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_memory_per_client_is_bounded(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """After 100,000 distinct clients each put once, a server holds < 200 bytes per client
    beyond the data stored (sessions are capped, least recently used evicted)."""
    # Snapshots keep the log (history, not data) bounded, as in production.
    cluster = make_cluster(3, server_args=["--snapshot-threshold", "1000000"])
    n_clients = 100_000

    async def load(start: int, stop: int) -> None:
        rpcs = [RpcClient(a, client_sender("loader")) for a in cluster.addresses]
        leader = 0
        sem = asyncio.Semaphore(256)

        async def one(i: int) -> None:
            nonlocal leader
            op = PutOp(f"k{i % 100}", "v", 0, uuid.UUID(int=i).hex, 1, 1)
            async with sem:
                while True:  # the client's retry rule, for ops carrying 100,000 client ids
                    try:
                        result = await rpcs[leader].call("put", op, 10)
                        if not isinstance(result, NotLeaderResult):
                            break
                    except (WrongLeader, RpcError):
                        pass
                    leader = (leader + 1) % len(rpcs)
                    await asyncio.sleep(0.01)
            assert isinstance(result, PutOk | VersionMismatchResult), result

        await asyncio.gather(*(one(i) for i in range(start, stop)))
        for rpc in rpcs:
            rpc.close()

    asyncio.run(load(0, 2000))  # warm up allocator and caches
    base = {i: _rss_bytes(cluster.pid(i)) for i in range(3)}  # type: ignore[arg-type]
    asyncio.run(load(2000, n_clients))
    grown = {i: _rss_bytes(cluster.pid(i)) - base[i] for i in range(3)}  # type: ignore[arg-type]
    per_client = max(grown.values()) / (n_clients - 2000)
    assert per_client < 200, f"{per_client:.0f} bytes per client (growth {grown})"


def test_a_client_given_only_a_follower_finds_the_leader_it_names(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """The leader of a cluster whose members changed may be at no address the client was
    given: the follower's NotLeader names it, and the client adds it and goes there.

    Reference: docs/membership.md (members replaced: tests/netns, n5 leading)
    """
    cluster = make_cluster(3)
    wait_until(
        lambda: any(r.get("role") == "leader" for r in statuses(cluster)), 20, message="a leader"
    )
    follower = next(r["id"] for r in statuses(cluster) if r.get("role") == "follower")
    with Client([cluster.addresses[follower]], deadline=20) as c:
        assert c.put("k", "v", 0) == 1
        assert c.get("k") == ("v", 1)
        learned = c.async_client.servers
    assert learned[0] == cluster.addresses[follower]
    assert len(learned) == 2 and learned[1] in cluster.addresses


class _RedirectsForever:
    """A server that names a new, never-seen leader in every answer.

    Each at port 9 of its own loopback address: nothing listens there (the
    connection is refused at once), whereas a port such as 20001 could be a
    server another test of the suite started meanwhile, which would answer.
    """

    def __init__(self) -> None:
        self.answers = 0

    async def handle_call(
        self, method: str, sender: str, args: object, *, peer_id: int | None = None
    ) -> NotLeaderResult:
        self.answers += 1
        n = self.answers
        return NotLeaderResult(f"127.0.{n // 250}.{1 + n % 250}:9")

    def handle_notify(
        self, method: str, sender: str, args: object, *, peer_id: int | None = None
    ) -> None:
        return None


def test_servers_learned_from_answers_are_bounded() -> None:
    """A server that names a new leader at every answer adds at most MAX_LEARNED_SERVERS."""
    handler = _RedirectsForever()

    async def scenario() -> list[str]:
        server = RpcServer(handler, name="redirects")
        await server.start("127.0.0.1", 0)
        client = AsyncClient([server.address], deadline=3.0, call_timeout_s=0.2)
        try:
            with pytest.raises(Unavailable):
                await client.put("k", "v", 0)
            return list(client.servers)
        finally:
            await client.close()
            await server.close()

    servers = asyncio.run(scenario())
    assert handler.answers > MAX_LEARNED_SERVERS
    assert len(servers) == 1 + MAX_LEARNED_SERVERS
    assert len(set(servers)) == len(servers)
