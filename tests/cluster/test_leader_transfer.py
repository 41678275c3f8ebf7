"""Leadership transfer on real processes: ``kvraft leader transfer``, SIGTERM on a leader.

The rolling restart under 64 puts in flight is in ``test_rolling_restart.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from kvraft.testing.waiting import wait_until

from .kv_support import find_leader, statuses

pytestmark = pytest.mark.slow

CLI_TIMEOUT_S = 60.0


def kvraft(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvraft", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def leader_of(cluster, node: int) -> object:  # type: ignore[no-untyped-def]
    """What node ``node`` says of the leader: its ``leader_id``, or None if unreachable."""
    row = statuses(cluster)[node]
    return row.get("leader_id") if row.get("reachable") else None


def test_leader_transfer_moves_leadership_and_the_old_leader_follows(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """``kvraft leader transfer --to ID`` answers once ID leads; every node then follows ID,
    the old leader included; writes go on at the new leader.

    Reference: Raft thesis §3.10
    """
    cluster = make_cluster(3)
    servers = ",".join(cluster.private_addresses)
    old = find_leader(cluster)
    target = (old + 1) % 3

    done = kvraft("leader", "transfer", "--to", str(target), "--servers", servers)

    assert done.returncode == 0, done.stderr
    assert re.fullmatch(rf"leadership moved from n{old} to n{target} in \d+ ms\n", done.stdout)
    assert find_leader(cluster) == target
    wait_until(
        lambda: all(leader_of(cluster, i) == target for i in range(3)),
        10,
        message=f"every node follows n{target}",
    )
    row = statuses(cluster)[old]
    assert row["role"] == "follower"
    log = cluster.log_path(old).read_text()
    assert f"transferring leadership to n{target} at index" in log
    assert f"handed leadership to n{target} in" in log

    again = kvraft("leader", "transfer", "--to", str(target), "--servers", servers, "--json")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f'{{"from": {target}, "to": {target}, "elapsed_ms": 0}}'


def test_leader_transfer_refusals_and_exit_codes(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """A target that is not a voter is refused by the leader (exit 1, its reason); a bad
    flag is a usage error (exit 2); no node answering is exit 3. Leadership stays put.

    Reference: Raft thesis §3.10
    """
    cluster = make_cluster(3)
    servers = ",".join(cluster.private_addresses)
    leader = find_leader(cluster)

    stranger = kvraft("leader", "transfer", "--to", "9", "--servers", servers)
    usage = kvraft("leader", "transfer", "--to", "-1", "--servers", servers)
    missing = kvraft("leader", "transfer", "--servers", servers)
    nobody = kvraft(
        "leader", "transfer", "--to", "1", "--servers", "127.0.0.1:9", "--timeout", "0.5"
    )

    assert stranger.returncode == 1
    assert stranger.stderr.startswith("kvraft: transfer to n9 refused: ")
    assert "n9 is not a voter" in stranger.stderr and "Traceback" not in stranger.stderr
    assert (usage.returncode, missing.returncode) == (2, 2)
    assert nobody.returncode == 3 and nobody.stderr.startswith("kvraft: cluster unavailable")
    assert find_leader(cluster) == leader


def test_sigterm_on_a_leader_hands_over_before_it_stops(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """A leader stopped by SIGTERM hands leadership to a follower first: its log says to
    whom and how fast, it exits 0, and the successor leads at once (no election timeout of
    silence, no node campaigning on its own timer first).

    Reference: Raft thesis §3.10
    """
    cluster = make_cluster(3)
    old = find_leader(cluster)

    status = cluster.terminate(old)

    assert status == 0
    log = cluster.log_path(old).read_text()
    handed = re.search(r"handed leadership to n(\d) in (\d+) ms", log)
    assert handed is not None, log[-2000:]
    successor = int(handed.group(1))
    assert successor != old
    assert find_leader(cluster) == successor
    assert "asked by leader" in cluster.log_path(successor).read_text()


def test_sigterm_on_a_follower_stops_it_without_a_transfer(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """A follower stops at once, as before transfers: the leader stays the leader."""
    cluster = make_cluster(3)
    leader = find_leader(cluster)
    follower = (leader + 1) % 3

    assert cluster.terminate(follower) == 0

    assert "transferring leadership" not in cluster.log_path(follower).read_text()
    assert find_leader(cluster) == leader


def test_sigterm_on_a_leader_cut_off_from_its_followers_stops_after_its_bound(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """No follower can be reached: the hand-over is abandoned (one election timeout in
    the core, at most two waited for), logged, and the leader stops and exits 0 anyway.

    Reference: Raft thesis §3.10
    """
    cluster = make_cluster(3)
    leader = find_leader(cluster)
    for follower in range(3):
        if follower != leader:
            cluster.disconnect(follower)

    assert cluster.terminate(leader) == 0

    log = cluster.log_path(leader).read_text()
    assert "stopping without a successor" in log
    # The core's abandonment, or (ticks running late on a loaded machine) the driver's bound.
    assert re.search(r"abandoned transfer to n\d after \d+ ticks|did not take over within", log)
    assert "handed leadership" not in log
