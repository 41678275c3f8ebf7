"""Snapshots and log compaction on real processes: bounded disk, InstallSnapshot, restarts."""

from __future__ import annotations

import pytest

from kvraft.client.client import Client
from kvraft.errors import Maybe
from kvraft.testing.cluster import Cluster
from kvraft.testing.waiting import wait_until

from .kv_support import call_timeout_for, find_leader, statuses
from .test_kvraft import partition_churn, rounds_with_faults

pytestmark = pytest.mark.slow

THRESHOLD = 20_000
SNAP_ARGS = ["--snapshot-threshold", str(THRESHOLD)]


def status_of(cluster: Cluster, i: int) -> dict:  # type: ignore[type-arg]
    row = statuses(cluster)[i]
    assert row.get("reachable"), row
    return row


def fill(
    client: Client,
    keys: int,
    rounds: int,
    expected: dict[str, tuple[str, int]] | None = None,
    value_bytes: int = 100,
) -> dict[str, tuple[str, int]]:
    """``rounds`` versioned puts on each of ``keys`` keys, continuing from ``expected``;
    returns (and updates) what each key must hold."""
    expected = {} if expected is None else expected
    for r in range(rounds):
        for k in range(keys):
            key = f"key{k}"
            value = f"{r}-" + "x" * value_bytes
            version = expected.get(key, ("", 0))[1]
            while True:
                try:
                    expected[key] = (value, client.put(key, value, version))
                    break
                except Maybe:  # lossy network: read whether the resent put applied
                    got, version = client.get(key)
                    if got == value:
                        expected[key] = (value, version)
                        break
    return expected


def check_all(client: Client, expected: dict[str, tuple[str, int]]) -> None:
    for key, want in expected.items():
        assert client.get(key) == want, key


def catch_up_then_lose_the_leader(
    cluster: Cluster, client: Client, lagger: int, leader: int, expected: dict[str, tuple[str, int]]
) -> None:
    """Wait until ``lagger`` has applied all the leader committed; then kill the leader, so
    that the caught-up follower is needed for a majority, and read everything back."""
    commit = status_of(cluster, find_leader(cluster))["commit_index"]
    wait_until(
        lambda: status_of(cluster, lagger)["applied_index"] >= commit,
        10,
        message=f"n{lagger} caught up to index {commit}",
    )
    cluster.kill(leader)
    check_all(client, expected)
    assert status_of(cluster, lagger)["snapshot_index"] > 0


def test_snapshot_basic(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Past the threshold every node snapshots and drops its log prefix; data stays intact."""
    cluster = make_cluster(3, server_args=SNAP_ARGS)
    with Client(cluster.addresses, deadline=30) as c:
        expected = fill(c, keys=10, rounds=30)
        wait_until(
            lambda: all(r["snapshot_index"] > 0 for r in statuses(cluster)),
            10,
            message="every node took a snapshot",
        )
        for row in statuses(cluster):
            assert row["first_index"] == row["snapshot_index"] + 1
            assert row["storage_bytes"] < 3 * THRESHOLD, row
        check_all(c, expected)


def test_install_snapshot_to_disconnected_follower(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """A follower cut off while the log was compacted past it catches up by InstallSnapshot."""
    cluster = make_cluster(3, server_args=SNAP_ARGS)
    with Client(cluster.addresses, deadline=30) as c:
        c.put("start", "x", 0)
        leader = find_leader(cluster)
        lagger = (leader + 1) % 3
        cluster.disconnect(lagger)
        expected = fill(c, keys=10, rounds=30)
        leader_row = status_of(cluster, find_leader(cluster))
        assert leader_row["snapshot_index"] > status_of(cluster, lagger)["last_index"]
        cluster.reconnect(lagger)
        catch_up_then_lose_the_leader(cluster, c, lagger, leader, expected)


def test_install_snapshot_to_crashed_follower(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """A follower that was down while the log was compacted past it restarts and catches up."""
    cluster = make_cluster(3, server_args=SNAP_ARGS)
    with Client(cluster.addresses, deadline=30) as c:
        c.put("start", "x", 0)
        leader = find_leader(cluster)
        lagger = (leader + 1) % 3
        cluster.kill(lagger)
        expected = fill(c, keys=10, rounds=30)
        cluster.restart(lagger)
        catch_up_then_lose_the_leader(cluster, c, lagger, leader, expected)


def test_install_snapshot_unreliable(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """InstallSnapshot on the lossy network, with a follower repeatedly cut off.

    Five servers, so the four left can keep a leader through the losses; a
    small threshold, so a few puts per round compact past the cut-off one.
    """
    cluster = make_cluster(5, network="lossy", server_args=["--snapshot-threshold", "3000"])
    with Client(cluster.addresses, deadline=60, call_timeout_s=call_timeout_for(cluster)) as c:
        expected: dict[str, tuple[str, int]] = {}
        for rnd in range(3):
            victim = rnd % 5
            cluster.disconnect(victim)
            fill(c, keys=3, rounds=3, expected=expected)
            cluster.reconnect(victim)
        check_all(c, expected)
        wait_until(
            lambda: sum(r["snapshot_index"] > 0 for r in statuses(cluster)) >= 3,
            20,
            message="snapshots taken and installed",
        )


def test_crash_restart_with_snapshots(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Whole-cluster crashes restore each node from its snapshot plus the log after it."""
    cluster = make_cluster(3, server_args=SNAP_ARGS)
    with Client(cluster.addresses, deadline=30) as c:
        expected = fill(c, keys=10, rounds=20)
        for _ in range(3):
            cluster.kill_all()
            cluster.restart_all()
            check_all(c, expected)
            fill(c, keys=3, rounds=5, expected=expected)
        assert all(r["snapshot_index"] > 0 for r in statuses(cluster))


def test_raft_state_stays_under_threshold(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """During a long put workload, the persisted Raft state stays under threshold + slack,
    and the snapshot is proportional to the data, not to the history."""
    cluster = make_cluster(3, server_args=SNAP_ARGS)
    peak = 0
    with Client(cluster.addresses, deadline=30) as c:
        expected: dict[str, tuple[str, int]] = {}
        for _ in range(10):
            fill(c, keys=5, rounds=10, expected=expected)
            peak = max(peak, max(r["storage_bytes"] for r in statuses(cluster)))
    # Slack: the entries applied while a snapshot is written, plus the snapshot itself.
    assert peak < 2 * THRESHOLD, peak
    # 5 keys of ~105 bytes: the snapshot is a few hundred bytes whatever the history.
    for row in statuses(cluster):
        assert row["snapshot_bytes"] < 5 * 200, row


def test_snapshot_recovery_with_partitions_and_crashes(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Recovery from snapshots with partitions and whole-cluster crashes, linearizable."""
    cluster = make_cluster(5, server_args=["--snapshot-threshold", "4000"])
    rounds_with_faults(
        cluster, nclients=3, rounds=3, round_s=1.5, fault=partition_churn, crash_all=True
    )


def test_snapshot_recovery_unreliable(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Recovery from snapshots with crashes on the lossy network, linearizable."""
    cluster = make_cluster(5, network="lossy", server_args=["--snapshot-threshold", "4000"])
    rounds_with_faults(cluster, nclients=3, rounds=3, round_s=1.5, crash_all=True)
