"""The process-cluster harness, on real stand-in server processes behind proxies.

Every cluster here runs ``tests/support/standin.py`` (see this directory's
conftest). Faults are observed from the servers' side: ``ping_peers`` sends a
notify to every other peer through the proxies, and ``heard`` says who got
through.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness_support import burst, call, outcome, rate_message, within

from kvraft.rpc.codec import client_sender
from kvraft.testing import processes
from kvraft.testing.cluster import Cluster, ServerStartError, on_cluster_created
from kvraft.testing.faults import RELIABLE
from kvraft.testing.waiting import wait_until

MakeCluster = Callable[..., Cluster]


def heard(cluster: Cluster, i: int) -> dict[str, int]:
    result: dict[str, int] = call(cluster.address(i), "heard")
    return result


def peers_heard(cluster: Cluster, i: int) -> set[str]:
    return {sender for sender in heard(cluster, i) if sender.startswith("p")}


def ping_all(cluster: Cluster, ids: list[int] | None = None) -> None:
    """Every listed server sends one hello to every other; wait until the proxies are quiet."""
    for i in range(cluster.n) if ids is None else ids:
        call(cluster.address(i), "ping_peers", 1, timeout_s=5.0)
    wait_until(
        lambda: cluster.stats().total("notify").in_flight == 0, 5.0, message="notifies delivered"
    )


def test_servers_get_the_product_command_line(make_cluster: MakeCluster, tmp_path: Path) -> None:
    """Each server: own data dir, private listen port, peers at the proxies' public addresses."""
    cluster = make_cluster(3, server_args=["--tick-ms", "5"], cluster_id="harness-test")
    assert len(set(cluster.addresses) | set(cluster.private_addresses)) == 6
    for i in range(3):
        info: dict[str, Any] = call(cluster.address(i), "info")
        assert info["id"] == i and info["pid"] == cluster.pid(i)
        assert info["cluster_id"] == "harness-test" and info["test_hooks"] is True
        assert info["data_dir"] == str(tmp_path / f"n{i}")
        assert info["peers"] == {str(j): a for j, a in enumerate(cluster.addresses)}
        assert list(info["extra"]) == ["--tick-ms", "5"]
        assert (tmp_path / f"n{i}.log").exists()
    argv = cluster.server_command(1)
    assert argv[argv.index("--listen") + 1] == cluster.private_addresses[1]
    # Every call above crossed the proxy of the server it went to.
    for i in range(3):
        assert cluster.stats(i).total("request", method="info").delivered == 1


def test_log_level_goes_before_the_subcommand(make_cluster: MakeCluster) -> None:
    """``--log-level`` is the product's top-level option (``kvraft --log-level L server``)."""
    cluster = make_cluster(1, log_level="debug")
    argv = cluster.server_command(0)
    assert argv.index("--log-level") < argv.index("server")
    wait_until(lambda: "event loop" in cluster.log_tail(0), 5.0, message="debug line in log")


def test_peers_reach_each_other_through_the_proxies(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    ping_all(cluster)
    for i in range(3):
        assert peers_heard(cluster, i) == {f"p{j}" for j in range(3) if j != i}
        assert cluster.stats(i).total("notify", peers_only=True).delivered == 2


def test_partition_separates_peers_until_healed(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    cluster.partition([0, 1], [2])
    ping_all(cluster)
    assert peers_heard(cluster, 0) == {"p1"}
    assert peers_heard(cluster, 1) == {"p0"}
    assert peers_heard(cluster, 2) == set()
    assert call(cluster.address(2), "echo", "clients unaffected") == "clients unaffected"
    cluster.heal()
    ping_all(cluster)
    assert peers_heard(cluster, 2) == {"p0", "p1"}


def test_disconnect_cuts_a_server_off_both_ways(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    cluster.disconnect(2)
    assert outcome(cluster.address(2), "echo", timeout_s=0.3) == "CallTimeout"
    ping_all(cluster, [0, 1])
    # 2 tries too (asked over its private port, around its own cut proxy): its
    # peer handshakes leave it but the other proxies drop them, so no
    # connection of its authenticates and no hello is ever written.
    assert list(_ping_around_proxy(cluster, 2)) == []
    wait_until(
        lambda: cluster.stats().total("handshake", sender="p2").dropped >= 2,
        5.0,
        message="handshakes from the disconnected server dropped",
    )
    assert cluster.stats().total("handshake", sender="p2").delivered == 0
    assert peers_heard(cluster, 0) == {"p1"} and peers_heard(cluster, 1) == {"p0"}
    assert cluster.is_alive(2)
    cluster.reconnect(2)
    assert peers_heard(cluster, 2) == set()
    ping_all(cluster)
    assert peers_heard(cluster, 2) == {"p0", "p1"}
    assert peers_heard(cluster, 0) == {"p1", "p2"}


def _ping_around_proxy(cluster: Cluster, i: int) -> Any:
    return call(cluster.private_addresses[i], "ping_peers", 1, timeout_s=5.0)


def test_block_client_silences_one_client_at_one_server(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(2)
    cluster.block_client(1, "alice")
    alice, bob = client_sender("alice"), client_sender("bob")
    assert outcome(cluster.address(1), "echo", sender=alice, timeout_s=0.3) == "CallTimeout"
    assert outcome(cluster.address(0), "echo", sender=alice) == "ok"
    assert outcome(cluster.address(1), "echo", sender=bob) == "ok"
    cluster.unblock_client(1, "alice")
    assert outcome(cluster.address(1), "echo", sender=alice) == "ok"


def test_kill_and_restart_keep_the_data_dir(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(2)
    for _ in range(5):
        call(cluster.address(0), "incr")
    old_pid = cluster.pid(0)
    cluster.kill(0)
    assert not cluster.is_alive(0) and cluster.pid(0) is None
    assert old_pid is not None and not processes.pid_alive(old_pid)
    # A crashed server's proxy resets connections at once: no timeout to wait out.
    # The reset races the client's write: before it, the call was never sent
    # (NotSent); after it, the connection was lost. Either is not a CallTimeout.
    assert outcome(cluster.address(0), "echo", timeout_s=5.0) in ("ConnectionLost", "NotSent")
    assert cluster.is_alive(1)
    cluster.restart(0)
    assert cluster.is_alive(0) and cluster.pid(0) != old_pid
    assert call(cluster.address(0), "incr", 0) == 5
    log = cluster.log_path(0).read_text()
    assert log.count(" start #") == 2 and "killed with SIGKILL" in log


def test_kill_all_and_restart_all(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    for i in range(3):
        call(cluster.address(i), "incr", i + 1)
    cluster.kill_all()
    assert not any(cluster.is_alive(i) for i in range(3))
    cluster.restart_all()
    assert [call(cluster.address(i), "incr", 0) for i in range(3)] == [1, 2, 3]
    ping_all(cluster)  # peers find each other again through the same proxies
    assert peers_heard(cluster, 0) == {"p1", "p2"}


def test_restart_of_a_running_server_crashes_it_first(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(1)
    first = cluster.pid(0)
    cluster.restart(0)
    assert cluster.pid(0) not in (None, first)


def test_terminate_stops_a_server_cleanly(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(1)
    assert cluster.terminate(0) == 0
    assert "n0 stopped" in cluster.log_tail(0)
    assert cluster.terminate(0) is None


def test_lossy_cluster_answers_a_quarter_of_calls(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(1, network="lossy", seed=7)
    cluster.set_network(RELIABLE)  # so that the burst's connection opens at once
    n = 400
    answers = asyncio.run(
        burst(
            cluster.address(0),
            "echo",
            list(range(n)),
            timeout_s=1.0,
            then=lambda: cluster.set_network("lossy"),
        )
    )
    answered = sum(a.ok for a in answers)
    assert within(answered, n, 0.25), rate_message("answered", answered, n, 0.25)


def test_a_server_that_exits_early_is_reported_with_its_log(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; print('boom: bad flags'); sys.exit(3)"]
    created: list[Cluster] = []
    remove = on_cluster_created(created.append)
    try:
        with pytest.raises(ServerStartError, match=r"(?s)n[01] exited with status 3.*boom: bad"):
            Cluster(2, base_dir=tmp_path, command=command)
    finally:
        remove()
    assert created[0].closed


def test_a_server_that_never_listens_misses_its_deadline(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import time; print('thinking', flush=True); time.sleep(60)"]
    created: list[Cluster] = []
    remove = on_cluster_created(created.append)
    try:
        with pytest.raises(ServerStartError, match=r"(?s)did not listen .* within 0.5s.*thinking"):
            Cluster(1, base_dir=tmp_path, command=command, ready_timeout_s=0.5)
    finally:
        remove()
    # The failed constructor killed what it had started.
    (cluster,) = created
    assert cluster.closed and cluster.spawned
    assert not any(processes.pid_alive(pid, started) for _, pid, started in cluster.spawned)


def test_bad_ids_are_refused(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(2)
    with pytest.raises(ValueError, match="no server 2"):
        cluster.kill(2)
    with pytest.raises(ValueError, match="no server 5"):
        cluster.partition([0], [5])
