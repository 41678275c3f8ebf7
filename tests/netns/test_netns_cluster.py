"""A 3-node cluster on hosts of their own: own namespaces, own addresses, a bridge between.

Every node listens on port 7001 of its own address (10.88.0.11-13), clients
run on a host of their own, and faults are cables pulled at the switch and
partitions between bridges (the kernel here has no netem; delays and loss
stay with the userspace proxy suites).
Each scenario runs under load from the client host and ends with a
linearizability check of everything the clients saw.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from kvraft.client.async_client import AsyncClient
from kvraft.errors import Unavailable
from kvraft.testing.history import History
from kvraft.testing.linearizability import assert_linearizable
from kvraft.testing.waiting import wait_until
from tests.support.rolling import terminate_reporting_handover

from .harness import NetnsCluster
from .load import Load
from .network import current_namespace_inode, namespace_inode

pytestmark = pytest.mark.slow

MakeCluster = Callable[..., NetnsCluster]
# Generous: a restarted process on 2 shared cores can take seconds to catch up.
NODE_DEADLINE_S = 30.0
CHECK_TIMEOUT_S = 30.0


def wait_for_progress(load: Load, ops: int, what: str) -> None:
    """Wait until ``ops`` more operations completed than now (fails on a failed one)."""
    target = load.completed + ops
    wait_until(
        lambda: load.completed >= target or load.failures,
        NODE_DEADLINE_S,
        message=f"{ops} operations {what}",
    )
    assert load.failures == [], load.failures


def wait_caught_up(cluster: NetnsCluster, node: int) -> None:
    """Wait until ``node`` has applied what the others had applied when this was called."""
    target = max(cluster.applied(i) for i in cluster.ids if i != node)
    wait_until(
        lambda: cluster.applied(node) >= target,
        NODE_DEADLINE_S,
        message=f"n{node} caught up to index {target}",
    )


def test_each_node_is_a_host_of_its_own_and_serves_a_client_on_another(
    netns_cluster: MakeCluster,
) -> None:
    """Each server process runs in its host's namespace, all on the same port of their own
    address; a client on the client host writes and reads; with the client's cable pulled
    it gets Unavailable, and with it back it reads what it wrote."""
    cluster = netns_cluster(3)
    outside = current_namespace_inode()
    for i in cluster.ids:
        pid = cluster.pid(i)
        assert pid is not None
        assert current_namespace_inode(pid) == namespace_inode(cluster.hosts[i].netns) != outside
    assert cluster.addresses == ["10.88.0.11:7001", "10.88.0.12:7001", "10.88.0.13:7001"]
    cluster.find_leader(NODE_DEADLINE_S)
    assert cluster.client_loop is not None

    async def write_and_read() -> tuple[str, int]:
        async with AsyncClient(cluster.addresses, deadline=NODE_DEADLINE_S) as client:
            await client.put("greeting", "hello", 0)
            return await client.get("greeting")

    assert cluster.client_loop.run(write_and_read()) == ("hello", 1)

    cluster.network.link_down("client")

    async def read_cut_off() -> None:
        async with AsyncClient(cluster.addresses, deadline=1.0, call_timeout_s=0.3) as client:
            await client.get("greeting")

    with pytest.raises(Unavailable):
        cluster.client_loop.run(read_cut_off())
    cluster.network.link_up("client")

    async def read() -> tuple[str, int]:
        async with AsyncClient(cluster.addresses, deadline=NODE_DEADLINE_S) as client:
            return await client.get("greeting")

    assert cluster.client_loop.run(read()) == ("hello", 1)
    # The command line, on the client host, sees every node at its own address.
    done = cluster.cli("status", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert sorted(row["address"] for row in rows) == cluster.addresses
    assert [row["role"] for row in rows].count("leader") == 1


def test_leader_cable_pulled_under_load_a_new_leader_serves_and_the_old_one_rejoins(
    netns_cluster: MakeCluster,
) -> None:
    """Pull the leader's cable under load: the other two elect a leader of a higher term
    and keep serving; the cut-off leader steps down on its own (check-quorum, seen from
    inside its namespace); with the cable back it catches up. No operation fails and the
    history is linearizable.

    Reference: Raft thesis §6.2 (check-quorum), §3.6
    """
    cluster = netns_cluster(3)
    old = cluster.find_leader(NODE_DEADLINE_S)
    old_term = cluster.status_from_inside(old)["term"]
    load = Load(cluster.addresses)
    assert cluster.client_loop is not None
    load.start(cluster.client_loop)
    try:
        wait_for_progress(load, 100, "before the cut")
        cluster.link_down(old)
        others = [i for i in cluster.ids if i != old]

        def higher_term_leader() -> tuple[int, int] | None:
            found = cluster.leader(among=others)
            return found if found is not None and found[1] > old_term else None

        elected = wait_until(
            higher_term_leader,
            NODE_DEADLINE_S,
            message="a leader of a higher term among the connected nodes",
        )
        assert elected is not None
        new, new_term = elected
        wait_for_progress(load, 200, f"with n{old}'s cable pulled")
        wait_until(
            lambda: cluster.status_from_inside(old)["role"] != "leader",
            NODE_DEADLINE_S,
            message=f"n{old}, cut off, stepping down",
        )
        cluster.link_up(old)
        wait_caught_up(cluster, old)
        row = cluster.status_from_inside(old)
        assert row["term"] >= new_term
        wait_for_progress(load, 100, "after the cable is back")
    finally:
        load.stop()
    print(f"leader n{old} cut off: n{new} led at term {new_term}; {len(load.history)} ops")
    assert load.failures == [], load.failures
    assert_linearizable(load.history, timeout_s=CHECK_TIMEOUT_S)


def test_partition_old_leader_with_a_client_serves_no_stale_read(
    netns_cluster: MakeCluster,
) -> None:
    """Split the network: the leader and one client host on one side, the other two nodes
    and a second client host on the other. The majority side elects a leader and takes a
    write; the old leader, though its client still reaches it, answers that client nothing
    (every read goes through a log it can no longer commit to), so the client never reads
    the value the write replaced; healed, it reads the new one. Linearizable.

    Reference: Raft thesis §6.4, §6.2
    """
    cluster = netns_cluster(3)
    assert cluster.client_loop is not None
    near, far = cluster.client_loop, cluster.add_client("clientb")
    history = History()
    old = cluster.find_leader(NODE_DEADLINE_S)
    old_term = cluster.status_from_inside(old)["term"]

    async def put(version: int, value: str) -> int:
        async with AsyncClient(cluster.addresses, deadline=NODE_DEADLINE_S) as c:
            return await history.arecord_put(
                c.client_id, "k", value, version, lambda: c.put("k", value, version)
            )

    async def get(deadline_s: float) -> tuple[str, int]:
        async with AsyncClient(cluster.addresses, deadline=deadline_s, call_timeout_s=0.3) as c:
            return await history.arecord_get(c.client_id, "k", lambda: c.get("k"))

    assert near.run(put(0, "v1")) == 1
    others = [i for i in cluster.ids if i != old]
    cluster.partition([old, "client"], [*others, "clientb"])
    try:
        wait_until(
            lambda: (
                (found := cluster.leader(among=others, via=far)) is not None and found[1] > old_term
            ),
            NODE_DEADLINE_S,
            message="a leader of a higher term on the majority side",
        )
        assert far.run(put(1, "v2")) == 2
        with pytest.raises(Unavailable):
            near.run(get(2.0))
        # Not for want of a server: the near side reaches the old leader, and only it.
        reachable = [int(r["id"]) for r in cluster.statuses(via=near) if r.get("reachable")]
        assert reachable == [old]
        wait_until(
            lambda: cluster.status_from_inside(old)["role"] != "leader",
            NODE_DEADLINE_S,
            message=f"n{old}, in the minority, stepping down",
        )
    finally:
        cluster.heal()
    assert near.run(get(NODE_DEADLINE_S)) == ("v2", 2)
    assert_linearizable(history, timeout_s=CHECK_TIMEOUT_S)


def restart_one(cluster: NetnsCluster, load: Load, node: int) -> dict[str, object]:
    """SIGTERM ``node``, check a leader handed over, start it again, wait until it caught up."""
    was_leader = cluster.find_leader(NODE_DEADLINE_S) == node
    stopped = terminate_reporting_handover(cluster, node, NODE_DEADLINE_S)
    if was_leader:
        assert stopped.handed_to is not None, f"n{node} stopped as leader without a hand-over"
    wait_for_progress(load, 50, f"with n{node} stopped")
    cluster.restart(node)
    wait_caught_up(cluster, node)
    return {
        "node": node,
        "was_leader": was_leader,
        "stop_s": stopped.stop_s,
        "transfer_ms": stopped.transfer_ms,
    }


def run_rolling_restart(cluster: NetnsCluster, rounds: int) -> None:
    """Each round: every node restarted, the leader last; then the load's verdict."""
    load = Load(cluster.addresses)
    assert cluster.client_loop is not None
    load.start(cluster.client_loop)
    events = []
    try:
        wait_for_progress(load, 100, "before the restarts")
        for _ in range(rounds):
            leader = cluster.find_leader(NODE_DEADLINE_S)
            for node in [i for i in cluster.ids if i != leader] + [leader]:
                events.append(restart_one(cluster, load, node))
        wait_for_progress(load, 100, "after the restarts")
    finally:
        load.stop()
    report = {
        "rounds": rounds,
        "operations": len(load.history),
        "failed": len(load.failures),
        "longest_put_ms": round(max(load.put_latencies) * 1000),
        "restarts": events,
    }
    print("rolling restart across namespaces:", json.dumps(report))
    assert load.failures == [], load.failures
    assert sum(1 for e in events if e["was_leader"]) >= rounds
    assert_linearizable(load.history, timeout_s=CHECK_TIMEOUT_S * rounds)


def test_rolling_restart_across_hosts_under_load_fails_no_operation(
    netns_cluster: MakeCluster,
) -> None:
    """SIGTERM each node in turn, the leader last (it hands its leadership over first),
    start it again and wait until it caught up: no operation fails, the load runs through
    every restart (progress is required while each node is down), and the history is
    linearizable.

    Reference: Raft thesis §3.10
    """
    run_rolling_restart(netns_cluster(3), rounds=1)


@pytest.mark.stress
def test_rolling_restarts_three_rounds_across_hosts_fail_no_operation(
    netns_cluster: MakeCluster,
) -> None:
    """As above, every node restarted three times."""
    run_rolling_restart(netns_cluster(3), rounds=3)


def test_a_fourth_host_joins_the_lan_with_one_call(netns_cluster: MakeCluster) -> None:
    """``add_node`` makes host n3 at the next node address, reachable from the client host;
    node 3's command line lists the members so far and itself. (The membership tests below
    start such a host as a member.)"""
    cluster = netns_cluster(3)
    host = cluster.add_node(3, start=False, server_args=["--snapshot-threshold", "0"])
    assert host.address == "10.88.0.14"
    assert cluster.addresses[-1] == "10.88.0.14:7001"
    argv = cluster.server_command(3)
    assert argv[:4] == ["ip", "netns", "exec", host.netns]
    peers = argv[argv.index("--peers") + 1]
    assert peers == ",".join(f"{i}=10.88.0.{11 + i}:7001" for i in range(4))
    assert argv[-2:] == ["--snapshot-threshold", "0"]
    assert cluster.client_loop is not None
    inside = cluster.inside(3)
    server = inside.run(asyncio.start_server(lambda r, w: w.close(), host.address, 7001))

    async def connect() -> bool:
        _, writer = await asyncio.open_connection(host.address, 7001)
        writer.close()
        return True

    try:
        assert cluster.client_loop.run(connect(), 10.0)
    finally:
        inside.close_server(server)


def member(cluster: NetnsCluster, *args: str) -> str:
    """``kvraft member ARGS...`` from the client host; its stdout (fails on an error)."""
    done = cluster.cli("member", *args)
    assert done.returncode == 0, f"kvraft member {' '.join(args)}: {done.stderr}"
    return done.stdout


def member_rows(cluster: NetnsCluster) -> dict[int, dict[str, object]]:
    rows = json.loads(member(cluster, "list", "--json"))["members"]
    return {int(row["id"]): row for row in rows}


def promote(cluster: NetnsCluster, node: int) -> str:
    """``member promote``, asked again while the leader refuses it for lagging (under load
    the leader's log moves on while a learner that had caught up applies): the operator's
    loop docs/membership.md describes. Any other error fails."""
    answers: list[str] = []

    def promoted() -> bool:
        done = cluster.cli("member", "promote", str(node))
        assert done.returncode == 0 or "entries behind the leader" in done.stderr, done.stderr
        answers.append(done.stdout)
        return done.returncode == 0

    wait_until(promoted, NODE_DEADLINE_S, interval_s=0.2, message=f"n{node} promoted")
    return answers[-1]


def join_as_learner(cluster: NetnsCluster, node: int, via: list[int]) -> None:
    """Make host n<node>, ``member add`` it as a learner, start it with --join, wait."""
    join = ",".join(cluster.address(i) for i in via)
    cluster.add_node(node, start=False, server_args=["--join", join])
    member(cluster, "add", str(node), cluster.address(node), "--learner")
    cluster.start([node])
    wait_caught_up(cluster, node)


def test_member_replaced_and_cluster_grown_across_hosts(netns_cluster: MakeCluster) -> None:
    """Under load from the client host: 3 -> 5 (each new host a learner joined with
    --join, caught up, promoted; a follower's cable pulled while n4 is promoted), a dead
    host replaced in two steps (remove n0; add n5 on a new host, --join, promote), then
    5 -> 3. No operation fails and the whole history is linearizable.

    Reference: Raft thesis §4.1, §4.2.1; docs/membership.md
    """
    cluster = netns_cluster(3)
    leader = cluster.find_leader(NODE_DEADLINE_S)
    load = Load(cluster.addresses)
    assert cluster.client_loop is not None
    load.start(cluster.client_loop)
    try:
        wait_for_progress(load, 20, "before any change")
        join_as_learner(cluster, 3, via=[0, 1, 2])
        assert "voters n0,n1,n2,n3," in promote(cluster, 3)
        join_as_learner(cluster, 4, via=[0, 1, 2])
        follower = next(i for i in (0, 1, 2) if i != leader)
        cluster.link_down(follower)
        assert "voters n0,n1,n2,n3,n4," in promote(cluster, 4)
        cluster.link_up(follower)
        wait_for_progress(load, 20, "with five voters")
        assert {i for i, r in member_rows(cluster).items() if r["role"] == "voter"} == set(range(5))

        cluster.kill(0)  # a dead host
        cluster.find_leader(NODE_DEADLINE_S, among=[1, 2, 3, 4])  # if n0 led: the election
        member(cluster, "remove", "0")  # step 1
        join_as_learner(cluster, 5, via=[1, 2])  # step 2: a new host, --join
        promote(cluster, 5)
        live = [1, 2, 3, 4, 5]
        for node in (3, 4):  # 5 -> 3
            # The removal before may have removed the leader, which then steps down:
            # wait out that election, as after the kill above.
            cluster.find_leader(NODE_DEADLINE_S, among=live)
            member(cluster, "remove", str(node))
            cluster.terminate(node)
            live.remove(node)
        wait_for_progress(load, 20, "with n1, n2, n5")
        rows = member_rows(cluster)
        assert {i for i, r in rows.items() if r["role"] == "voter"} == {1, 2, 5}
        assert not [i for i, r in rows.items() if r["role"] == "learner"]
    finally:
        load.stop()
    assert load.failures == [], load.failures
    assert_linearizable(load.history, CHECK_TIMEOUT_S)
